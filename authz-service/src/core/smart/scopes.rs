//! Scope grammar: parsing `context/Type.perms?query` tokens (v1 and v2) into a [`ScopeSet`], and
//! the launch-context patient claim.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// The v2 permission letters as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms(pub(crate) u8);

impl Perms {
    pub const C: Perms = Perms(1);
    pub const R: Perms = Perms(2);
    pub const U: Perms = Perms(4);
    pub const D: Perms = Perms(8);
    pub const S: Perms = Perms(16);
    pub const ALL: Perms = Perms(31);

    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// `cruds` order, only the letters present.
    pub fn letters(self) -> String {
        [
            (Perms::C, 'c'),
            (Perms::R, 'r'),
            (Perms::U, 'u'),
            (Perms::D, 'd'),
            (Perms::S, 's'),
        ]
        .iter()
        .filter(|(p, _)| self.contains(*p))
        .map(|(_, c)| *c)
        .collect()
    }

    fn parse(s: &str) -> Option<Perms> {
        match s {
            "read" => return Some(Perms::R.union(Perms::S)),
            "write" => return Some(Perms::C.union(Perms::U).union(Perms::D)),
            "*" => return Some(Perms::ALL),
            "" => return None,
            _ => {}
        }
        // v2: letters strictly in c, r, u, d, s order, each at most once.
        let order = "cruds";
        let mut last: Option<usize> = None;
        let mut out = Perms::default();
        for ch in s.chars() {
            let pos = order.find(ch)?;
            if last.is_some_and(|l| pos <= l) {
                return None;
            }
            last = Some(pos);
            out = out.union(Perms(1 << pos));
        }
        Some(out)
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    pub perms: Perms,
    /// The granular filter of a v2 scope (`category=...`), if any.
    pub query: Option<String>,
}

/// Scopes that are part of SMART but grant no resource access.
pub(super) const NON_RESOURCE_SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
];

/// The result of reading a token's scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    pub scopes: Vec<Scope>,
    /// Tokens that are neither resource scopes nor known non-resource scopes; they grant nothing.
    pub ignored: Vec<String>,
}

/// Parses one scope token.
pub fn parse_scope(token: &str) -> Option<Scope> {
    let (context, rest) = token.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) if !q.is_empty() => (r, Some(q.to_string())),
        Some(_) => return None,
        None => (rest, None),
    };
    let (rt, perms) = rest.rsplit_once('.')?;
    let resource_type = if rt == "*" {
        None
    } else if !rt.is_empty()
        && rt.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && rt.chars().all(|c| c.is_ascii_alphabetic())
    {
        Some(rt.to_string())
    } else {
        return None;
    };
    let perms = Perms::parse(perms)?;
    if query.is_some() && matches!(perms, p if p == Perms::ALL && rt == "*") {
        // `*.cruds?x` is not meaningful; refuse rather than guess.
        return None;
    }
    Some(Scope {
        context,
        resource_type,
        perms,
        query,
    })
}

/// Reads a space-separated scope string (or the items of an array claim).
pub fn parse_scopes<'a>(tokens: impl IntoIterator<Item = &'a str>) -> ScopeSet {
    let mut out = ScopeSet::default();
    for t in tokens {
        if t.is_empty() {
            continue;
        }
        match parse_scope(t) {
            Some(s) => out.scopes.push(s),
            None if NON_RESOURCE_SCOPES.contains(&t) => {}
            None => out.ignored.push(t.to_string()),
        }
    }
    out
}

/// A patient id from the context claim: `abc` or `Patient/abc`.
pub fn context_patient_id(claim: &str) -> Option<&str> {
    let id = claim.strip_prefix("Patient/").unwrap_or(claim);
    (!id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then_some(id)
}
