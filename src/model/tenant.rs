//! Tenants: whose operations a caller may see and change.
//!
//! Every operation belongs to one [`Tenant`]. A server that runs without
//! authentication has only the default tenant, which has no name. A caller
//! acts within a [`Scope`]: one tenant, or all of them (administrators, and
//! code embedding the engine). An operation outside the caller's scope is
//! reported as not found, exactly as if it did not exist, so existence
//! never leaks.

use std::fmt;
use std::sync::Arc;

/// The longest tenant name.
pub const MAX_TENANT_LEN: usize = 63;

/// A tenant: the default one, or one with a checked name. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Option<Arc<str>>);

impl Tenant {
    /// The tenant of a server that runs without authentication.
    pub fn default_tenant() -> Self {
        Self(None)
    }

    /// A named tenant; see [`check_tenant_name`] for what a name may be.
    pub fn named(name: &str) -> Result<Self, String> {
        check_tenant_name(name)?;
        Ok(Self(Some(Arc::from(name))))
    }

    /// Reads a stored name: empty for the default tenant.
    pub fn from_stored(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            Ok(Self::default_tenant())
        } else {
            Self::named(name)
        }
    }

    /// True for the default tenant.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }

    /// The name; empty for the default tenant. This is also how it is
    /// stored.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Tenant(default)"),
            Some(name) => write!(f, "Tenant({name})"),
        }
    }
}

impl std::str::FromStr for Tenant {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::named(name)
    }
}

/// What a caller may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's operations.
    All,
    /// One tenant's operations only.
    Tenant(Tenant),
}

impl Scope {
    /// True when an operation of `tenant` is visible in this scope.
    pub fn permits(&self, tenant: &Tenant) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(own) => own == tenant,
        }
    }

    /// The one tenant this scope covers; None when it covers all.
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Scope::All => None,
            Scope::Tenant(tenant) => Some(tenant),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all tenants"),
            Scope::Tenant(t) if t.is_default() => f.write_str("the default tenant"),
            Scope::Tenant(t) => write!(f, "tenant {:?}", t.as_str()),
        }
    }
}

/// Checks a tenant name: 1 to 63 of lowercase ASCII letters, digits, `-`
/// and `_`, starting with a letter or digit. Names are used in storage keys
/// and file names, so nothing else is allowed.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || name.len() > MAX_TENANT_LEN {
        return Err(format!(
            "tenant {name:?} must be 1 to {MAX_TENANT_LEN} characters and start with a lowercase letter or digit"
        ));
    }
    if let Some(bad) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "tenant {name:?} contains {bad:?}; use lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_scope_sees_only_its_tenant() {
        let acme = Tenant::named("acme").unwrap();
        let scope = Scope::Tenant(acme.clone());
        assert!(scope.permits(&acme));
        assert!(!scope.permits(&Tenant::named("globex").unwrap()));
        assert!(!scope.permits(&Tenant::default_tenant()));
        assert!(Scope::All.permits(&acme));
    }

    #[test]
    fn tenant_names_are_checked() {
        for good in ["acme", "a", "team-7", "x_y", &"a".repeat(63)] {
            assert_eq!(check_tenant_name(good), Ok(()), "{good}");
            assert_eq!(Tenant::named(good).unwrap().as_str(), good);
        }
        for bad in ["", "Acme", "-x", "a b", "a/b", "a\0", &"a".repeat(64), "é"] {
            assert!(check_tenant_name(bad).is_err(), "{bad:?}");
        }
        assert!(Tenant::from_stored("").unwrap().is_default());
    }
}
