//! The C ABI between Envoy 1.40 (dynamic modules ABI `v0.2.0`) and this module: the event
//! hooks Envoy calls, and the callbacks into Envoy. The only module of the crate with `unsafe`.
//!
//! Callbacks are not linked as undefined symbols: [`program_init`] resolves each one by name
//! in the Envoy process (`dlsym`) and refuses to load when one is missing, so a module built
//! for another Envoy minor fails at load time with the name of what is missing instead of
//! crashing on a request. The same list ([`CALLBACK_NAMES`]) is checked against the pinned
//! binary's exported symbols by a test.
//!
//! Every hook runs its body under `catch_unwind` (see [`guard`]): a panic never crosses into
//! Envoy; in a request hook it becomes a 503 local reply (fail closed).

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crate::filter::{self, BodyStatus, Filter, FilterConfig, HeadersStatus};

/// The ABI version this module was written against (Envoy 1.40).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(s: &[u8]) -> Self {
        ModuleBuffer {
            ptr: s.as_ptr().cast(),
            length: s.len(),
        }
    }

    /// A null buffer: `set_header` with it removes the header.
    fn null() -> Self {
        ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

#[repr(C)]
pub struct ModuleHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

// Enum values of abi.h, passed as C `int`s.
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;
const METADATA_ROUTE: u32 = 1;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress` (`source.address`).
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
const LOG_ERROR: u32 = 4;
const METRICS_SUCCESS: u32 = 0;

type FilterPtr = *mut c_void;
type ConfigPtr = *mut c_void;
type SchedulerPtr = *mut c_void;

unsafe extern "C" {
    // glibc: RTLD_DEFAULT is the null handle (search the global scope, Envoy's executable
    // included, whose callbacks are exported dynamic symbols).
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

macro_rules! callbacks {
    ($( $field:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// Envoy's callbacks, resolved once at program init.
        struct Callbacks {
            $( $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        /// Every callback the module calls, by its exported symbol name.
        pub const CALLBACK_NAMES: &[&str] = &[
            $( concat!("envoy_dynamic_module_callback_", stringify!($field)), )*
        ];

        impl Callbacks {
            fn resolve() -> Result<Callbacks, &'static str> {
                Ok(Callbacks {
                    $( $field: {
                        let name = concat!("envoy_dynamic_module_callback_", stringify!($field), "\0");
                        // SAFETY: dlsym with the global handle and a NUL-terminated name only
                        // looks the symbol up.
                        let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr().cast()) };
                        if p.is_null() {
                            return Err(name.trim_end_matches('\0'));
                        }
                        // SAFETY: the symbol is Envoy's callback of that name, whose C
                        // signature (abi.h, ABI v0.2.0) is the one declared here; a data
                        // pointer and a function pointer have the same size on this target.
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(p)
                        }
                    }, )*
                })
            }
        }
    };
}

callbacks! {
    log: fn(u32, ModuleBuffer);
    http_get_headers_size: fn(FilterPtr, u32) -> usize;
    http_get_headers: fn(FilterPtr, u32, *mut EnvoyHttpHeader) -> bool;
    http_set_header: fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer) -> bool;
    http_get_body_size: fn(FilterPtr, u32) -> usize;
    http_get_body_chunks_size: fn(FilterPtr, u32) -> usize;
    http_get_body_chunks: fn(FilterPtr, u32, *mut EnvoyBuffer) -> bool;
    http_send_response: fn(FilterPtr, u32, *mut ModuleHttpHeader, usize, ModuleBuffer, ModuleBuffer);
    http_filter_continue_decoding: fn(FilterPtr);
    http_get_metadata_string: fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, *mut EnvoyBuffer) -> bool;
    http_filter_get_attribute_string: fn(FilterPtr, u32, *mut EnvoyBuffer) -> bool;
    http_filter_scheduler_new: fn(FilterPtr) -> SchedulerPtr;
    http_filter_scheduler_commit: fn(SchedulerPtr, u64);
    http_filter_scheduler_delete: fn(SchedulerPtr);
    http_filter_config_define_counter: fn(ConfigPtr, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> u32;
    http_filter_config_define_histogram: fn(ConfigPtr, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> u32;
    http_filter_increment_counter: fn(FilterPtr, usize, *const ModuleBuffer, usize, u64) -> u32;
    http_filter_record_histogram_value: fn(FilterPtr, usize, *const ModuleBuffer, usize, u64) -> u32;
}

static CALLBACKS: OnceLock<Callbacks> = OnceLock::new();

fn callbacks() -> Option<&'static Callbacks> {
    CALLBACKS.get()
}

/// Copies an Envoy-owned buffer.
///
/// SAFETY (for callers): `b` must come from Envoy during the current hook, pointing at
/// `b.length` readable bytes (or be null).
unsafe fn copy(b: EnvoyBuffer) -> Vec<u8> {
    if b.ptr.is_null() || b.length == 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller (see above).
    unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) }.to_vec()
}

fn lossy(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Logs through Envoy's own log (component `dynamic_modules`).
pub fn log_error(message: &str) {
    if let Some(cb) = callbacks() {
        // SAFETY: the buffer points at `message`, alive for the call.
        unsafe { (cb.log)(LOG_ERROR, ModuleBuffer::of(message.as_bytes())) }
    } else {
        eprintln!("fhirguard: {message}");
    }
}

/// Envoy's filter config, valid during `on_http_filter_config_new` (where metrics are defined).
pub struct EnvoyFilterConfig {
    ptr: ConfigPtr,
    cb: &'static Callbacks,
}

impl EnvoyFilterConfig {
    fn define(&self, histogram: bool, name: &str, labels: &[&str]) -> Option<usize> {
        let labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        let mut id = 0usize;
        let define = if histogram {
            self.cb.http_filter_config_define_histogram
        } else {
            self.cb.http_filter_config_define_counter
        };
        // SAFETY: the live filter config of this hook; name and labels outlive the call (Envoy
        // copies them into its symbol table); `id` is written by Envoy only.
        let result = unsafe {
            define(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// A counter with these label names; `None` if Envoy refused it.
    pub fn define_counter(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(false, name, labels)
    }

    pub fn define_histogram(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(true, name, labels)
    }
}

/// One stream's Envoy filter, valid during the hook that received it. Not `Send`: it is only
/// used on the worker thread that runs the stream.
pub struct EnvoyFilter {
    ptr: FilterPtr,
    cb: &'static Callbacks,
}

impl EnvoyFilter {
    /// The request headers, names as Envoy holds them (lower case), in order.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        // SAFETY: `ptr` is the live filter of the current hook.
        let n = unsafe { (self.cb.http_get_headers_size)(self.ptr, REQUEST_HEADER) };
        if n == 0 {
            return Vec::new();
        }
        let empty = EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        let mut raw = vec![empty; n];
        // SAFETY: `raw` has room for the `n` headers Envoy just counted.
        let ok = unsafe { (self.cb.http_get_headers)(self.ptr, REQUEST_HEADER, raw.as_mut_ptr()) };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy filled these from its header map, valid during this hook.
                let k = unsafe {
                    copy(EnvoyBuffer {
                        ptr: h.key_ptr,
                        length: h.key_length,
                    })
                };
                // SAFETY: as above.
                let v = unsafe {
                    copy(EnvoyBuffer {
                        ptr: h.value_ptr,
                        length: h.value_length,
                    })
                };
                (lossy(k), lossy(v))
            })
            .collect()
    }

    fn set_header(&self, kind: u32, key: &str, value: Option<&str>) {
        let value = value.map_or(ModuleBuffer::null(), |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: live filter; the buffers point at strings alive for the call.
        unsafe {
            (self.cb.http_set_header)(self.ptr, kind, ModuleBuffer::of(key.as_bytes()), value)
        };
    }

    /// Sets a request header, replacing every value it had.
    pub fn set_request_header(&self, key: &str, value: &str) {
        self.set_header(REQUEST_HEADER, key, Some(value));
    }

    pub fn remove_request_header(&self, key: &str) {
        self.set_header(REQUEST_HEADER, key, None);
    }

    pub fn set_response_header(&self, key: &str, value: &str) {
        self.set_header(RESPONSE_HEADER, key, Some(value));
    }

    fn chunks(&self, kind: u32, out: &mut Vec<u8>) {
        // SAFETY: live filter.
        let n = unsafe { (self.cb.http_get_body_chunks_size)(self.ptr, kind) };
        if n == 0 {
            return;
        }
        let mut raw = vec![
            EnvoyBuffer {
                ptr: std::ptr::null(),
                length: 0
            };
            n
        ];
        // SAFETY: `raw` has room for the `n` chunks Envoy just counted.
        if unsafe { (self.cb.http_get_body_chunks)(self.ptr, kind, raw.as_mut_ptr()) } {
            for b in raw {
                // SAFETY: chunks of Envoy's body buffer, valid during this hook.
                out.extend_from_slice(&unsafe { copy(b) });
            }
        }
    }

    /// How many request body bytes arrived so far (buffered and just received).
    pub fn request_body_len(&self) -> usize {
        // SAFETY: live filter.
        unsafe {
            (self.cb.http_get_body_size)(self.ptr, BUFFERED_REQUEST_BODY)
                + (self.cb.http_get_body_size)(self.ptr, RECEIVED_REQUEST_BODY)
        }
    }

    /// The whole request body so far: what earlier hooks buffered, then the chunk just
    /// received.
    pub fn request_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.chunks(BUFFERED_REQUEST_BODY, &mut out);
        self.chunks(RECEIVED_REQUEST_BODY, &mut out);
        out
    }

    pub fn send_response(
        &self,
        status: u16,
        headers: &[(String, String)],
        body: &str,
        details: &str,
    ) {
        let mut raw: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: live filter; headers, body and details outlive the call (Envoy copies them).
        unsafe {
            (self.cb.http_send_response)(
                self.ptr,
                u32::from(status),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    /// Adds to a counter defined by this stream's filter config (label values in order).
    pub fn increment_counter(&self, id: usize, labels: &[&str], value: u64) {
        let labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        // SAFETY: live filter; the label buffers outlive the call.
        unsafe {
            (self.cb.http_filter_increment_counter)(
                self.ptr,
                id,
                labels.as_ptr(),
                labels.len(),
                value,
            )
        };
    }

    pub fn record_histogram(&self, id: usize, labels: &[&str], value: u64) {
        let labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        // SAFETY: live filter; the label buffers outlive the call.
        unsafe {
            (self.cb.http_filter_record_histogram_value)(
                self.ptr,
                id,
                labels.as_ptr(),
                labels.len(),
                value,
            )
        };
    }

    pub fn continue_decoding(&self) {
        // SAFETY: live filter.
        unsafe { (self.cb.http_filter_continue_decoding)(self.ptr) }
    }

    /// A string of the route's `filter_metadata`.
    pub fn route_metadata(&self, namespace: &str, key: &str) -> Option<String> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: live filter; `out` is written by Envoy only.
        let found = unsafe {
            (self.cb.http_get_metadata_string)(
                self.ptr,
                METADATA_ROUTE,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                &mut out,
            )
        };
        // SAFETY: on success `out` points into the route's metadata, alive during this hook.
        found.then(|| lossy(unsafe { copy(out) }))
    }

    /// The downstream client's address (`source.address`), as ext_authz's
    /// `attributes.source.address` names it; for AuditEvents.
    pub fn source_address(&self) -> Option<String> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: live filter; `out` is written by Envoy only.
        let found = unsafe {
            (self.cb.http_filter_get_attribute_string)(self.ptr, ATTRIBUTE_SOURCE_ADDRESS, &mut out)
        };
        if !found || out.ptr.is_null() {
            return None;
        }
        // SAFETY: on success `out` points into the stream's info, alive during this hook.
        without_port(&lossy(unsafe { copy(out) }))
    }

    /// A scheduler that wakes this stream on its worker thread from any thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: live filter.
        let ptr = unsafe { (self.cb.http_filter_scheduler_new)(self.ptr) };
        (!ptr.is_null()).then_some(Scheduler { ptr, cb: self.cb })
    }
}

/// Envoy's per-stream scheduler. Envoy keeps only a weak reference to the stream in it, so a
/// commit after the stream ended is dropped by Envoy; the module deletes it when the last
/// owner (the stream or its background task) lets go.
pub struct Scheduler {
    ptr: SchedulerPtr,
    cb: &'static Callbacks,
}

// SAFETY: Envoy's scheduler posts to the worker's dispatcher, which is thread-safe; commit and
// delete are documented to be callable from any thread.
unsafe impl Send for Scheduler {}
// SAFETY: as above; commit takes no lock on module state.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: `ptr` is alive until Drop.
        unsafe { (self.cb.http_filter_scheduler_commit)(self.ptr, event_id) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: deleted exactly once, here.
        unsafe { (self.cb.http_filter_scheduler_delete)(self.ptr) }
    }
}

/// Envoy 1.40 gives `source.address` as `ip:port` (`[v6]:port`); ext_authz's CheckRequest
/// carries the IP alone, and so do AuditEvents from either host. Anything that is not an IP
/// address (a Unix socket's path) is no client address, as ext_authz has none for it.
fn without_port(addr: &str) -> Option<String> {
    let ip = if let Some(rest) = addr.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match addr.rsplit_once(':') {
            Some((ip, port)) if !ip.contains(':') && port.parse::<u16>().is_ok() => ip,
            _ => addr,
        }
    };
    ip.parse::<std::net::IpAddr>().ok().map(|a| a.to_string())
}

fn envoy(ptr: FilterPtr) -> Option<EnvoyFilter> {
    callbacks().map(|cb| EnvoyFilter { ptr, cb })
}

/// Runs a hook body; a panic is caught and becomes `on_panic`'s value.
fn guard<T>(what: &str, body: impl FnOnce() -> T, on_panic: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(_) => {
            log_error(&format!("fhirguard: panic in {what}; failing closed"));
            on_panic()
        }
    }
}

/// The filter behind Envoy's pointer.
///
/// SAFETY (for callers): `ptr` must be a pointer returned by [`envoy_dynamic_module_on_http_filter_new`]
/// and not yet destroyed; Envoy calls a stream's hooks one at a time on one thread.
unsafe fn filter_mut<'a>(ptr: *const c_void) -> &'a mut Filter {
    // SAFETY: see above: a live Box<Filter> with no other reference in use.
    unsafe { &mut *(ptr as *mut Filter) }
}

/// 503 for a request whose hook panicked.
fn fail_closed(ptr: FilterPtr) {
    if let Some(e) = envoy(ptr) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            filter::send_unavailable(&e, "internal fault")
        }));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(
        "program init",
        || match Callbacks::resolve() {
            Ok(cb) => {
                let _ = CALLBACKS.set(cb);
                filter::program_init();
                ABI_VERSION.as_ptr().cast()
            }
            Err(missing) => {
                eprintln!(
                    "fhirguard: this Envoy lacks the callback {missing}; the module is built for Envoy 1.40 (ABI v0.2.0)"
                );
                std::ptr::null()
            }
        },
        std::ptr::null,
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(
        "filter config",
        || {
            // SAFETY: Envoy passes the filter config bytes, valid during this hook.
            let bytes = unsafe { copy(config) };
            let Some(cb) = callbacks() else {
                return std::ptr::null();
            };
            let envoy_config = EnvoyFilterConfig {
                ptr: config_envoy_ptr,
                cb,
            };
            match FilterConfig::new(&bytes, &envoy_config) {
                Ok(c) => Box::into_raw(Box::new(c)) as *const c_void,
                Err(e) => {
                    log_error(&format!("fhirguard: invalid filter config: {e}"));
                    std::ptr::null()
                }
            }
        },
        std::ptr::null,
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard(
        "filter config destroy",
        || {
            if !config.is_null() {
                // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once.
                drop(unsafe { Box::from_raw(config as *mut FilterConfig) });
            }
        },
        || (),
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    guard(
        "filter new",
        || {
            if config.is_null() {
                return std::ptr::null();
            }
            // SAFETY: a live FilterConfig (Envoy destroys it only after its streams).
            let config = unsafe { &*(config as *const FilterConfig) };
            Box::into_raw(Box::new(Filter::new(config))) as *const c_void
        },
        std::ptr::null,
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard(
        "filter destroy",
        || {
            if !filter.is_null() {
                // SAFETY: made by Box::into_raw in filter_new; Envoy destroys it once.
                drop(unsafe { Box::from_raw(filter as *mut Filter) });
            }
        },
        || (),
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy_ptr: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(
        "request headers",
        || {
            let Some(e) = envoy(envoy_ptr) else {
                return HeadersStatus::StopIteration as u32;
            };
            // SAFETY: Envoy's live filter for this stream.
            let f = unsafe { filter_mut(filter) };
            f.on_request_headers(&e, end_of_stream) as u32
        },
        || {
            fail_closed(envoy_ptr);
            HeadersStatus::StopIteration as u32
        },
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy_ptr: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(
        "request body",
        || {
            let Some(e) = envoy(envoy_ptr) else {
                return BodyStatus::StopIterationNoBuffer as u32;
            };
            // SAFETY: Envoy's live filter for this stream.
            let f = unsafe { filter_mut(filter) };
            f.on_request_body(&e, end_of_stream) as u32
        },
        || {
            fail_closed(envoy_ptr);
            BodyStatus::StopIterationNoBuffer as u32
        },
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy_ptr: *mut c_void,
    filter: *const c_void,
) -> u32 {
    guard(
        "request trailers",
        || {
            let Some(e) = envoy(envoy_ptr) else {
                return 1;
            };
            // SAFETY: Envoy's live filter for this stream.
            let f = unsafe { filter_mut(filter) };
            f.on_request_trailers(&e) as u32
        },
        || {
            fail_closed(envoy_ptr);
            1
        },
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy_ptr: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guard(
        "response headers",
        || {
            if let Some(e) = envoy(envoy_ptr) {
                // SAFETY: Envoy's live filter for this stream.
                let f = unsafe { filter_mut(filter) };
                f.on_response_headers(&e);
            }
            0
        },
        || 0,
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
) -> u32 {
    0
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy_ptr: *mut c_void,
    filter: *const c_void,
) {
    guard(
        "stream complete",
        || {
            // SAFETY: Envoy's live filter for this stream.
            let f = unsafe { filter_mut(filter) };
            f.on_stream_complete();
        },
        || (),
    )
}

/// # Safety
/// Called by Envoy only, with the pointers this module handed out for a live config or
/// stream (see abi.h, ABI v0.2.0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy_ptr: *mut c_void,
    filter: *const c_void,
    event_id: u64,
) {
    guard(
        "scheduled",
        || {
            if let Some(e) = envoy(envoy_ptr) {
                // SAFETY: Envoy delivers a scheduled event only to a live filter.
                let f = unsafe { filter_mut(filter) };
                f.on_scheduled(&e, event_id);
            }
        },
        || fail_closed(envoy_ptr),
    )
}

// Hooks the module does not use; Envoy requires an HTTP filter module to export them.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _chunks: *const EnvoyBuffer,
    _chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy_ptr: *mut c_void,
    _filter: *const c_void,
) {
}

/// The hooks this module exports (what Envoy looks up when it loads an HTTP filter module).
pub const HOOK_NAMES: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_hook_body_gives_the_fail_closed_value() {
        let got = guard("test", || -> u32 { panic!("boom") }, || 503);
        assert_eq!(got, 503);
        assert_eq!(guard("test", || 7u32, || 503), 7);
    }

    #[test]
    fn client_addresses_lose_their_port() {
        for (given, want) in [
            ("127.0.0.1:49824", Some("127.0.0.1")),
            ("[::1]:8080", Some("::1")),
            ("[2001:db8::7]:1", Some("2001:db8::7")),
            ("10.0.0.1", Some("10.0.0.1")),
            ("::1", Some("::1")),
            ("/run/envoy.sock", None),
            ("@abstract:1", None),
            ("host.example:80", None),
            ("", None),
        ] {
            assert_eq!(without_port(given).as_deref(), want, "{given}");
        }
    }

    #[test]
    fn the_lists_name_distinct_symbols() {
        let mut all: Vec<&str> = CALLBACK_NAMES.iter().chain(HOOK_NAMES).copied().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(
            CALLBACK_NAMES
                .iter()
                .all(|n| n.starts_with("envoy_dynamic_module_callback_"))
        );
        assert!(
            HOOK_NAMES
                .iter()
                .all(|n| n.starts_with("envoy_dynamic_module_on_"))
        );
    }
}
