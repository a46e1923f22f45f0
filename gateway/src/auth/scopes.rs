//! SMART App Launch scopes (v1 and v2 syntax), as the resource server reads them. Pure.
//!
//! `context/Type.permissions[?query]`: context `patient`, `user` or `system`; type a resource
//! type or `*`; permissions in v2 a subset of `cruds` in that order (`rs`, `cud`, …), in v1
//! `read` (= `rs`), `write` (= `cud`) or `*` (= `cruds`). A v2 scope may narrow itself with a
//! query (`patient/Observation.rs?category=laboratory`): it then grants only resources matching
//! every parameter. Other scopes (`openid`, `fhirUser`, `launch/patient`, `offline_access`, …)
//! carry no resource permission; malformed resource scopes are ignored (they grant nothing).

use std::fmt;

/// Whose data a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeContext {
    /// The patient in the token's `patient` claim.
    Patient,
    /// Whatever the user (`fhirUser`) may see.
    User,
    /// A backend service (another gateway, an integration engine).
    System,
}

/// The five SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    const ORDER: [(char, Permission); 5] = [
        ('c', Permission::Create),
        ('r', Permission::Read),
        ('u', Permission::Update),
        ('d', Permission::Delete),
        ('s', Permission::Search),
    ];

    fn letter(self) -> char {
        Self::ORDER.iter().find(|(_, permission)| *permission == self).map(|(letter, _)| *letter).expect("every permission has a letter")
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: ScopeContext,
    /// `None`: every resource type (`*`).
    pub resource_type: Option<String>,
    permissions: [bool; 5],
    /// v2 query restriction: `(name, value)` pairs, all of which a resource must match.
    pub restriction: Vec<(String, String)>,
}

impl Scope {
    /// Parses one scope string; `None` if it is not a (well-formed) resource scope.
    pub fn parse(text: &str) -> Option<Scope> {
        let (context, rest) = text.split_once('/')?;
        let context = match context {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (resource_type, permissions) = rest.rsplit_once('.')?;
        let resource_type = match resource_type {
            "*" => None,
            name if crate::fhir::resource_type::is_resource_type(name) => Some(name.to_string()),
            _ => return None,
        };
        let permissions = match permissions {
            "read" => [false, true, false, false, true],
            "write" => [true, false, true, true, false],
            "*" => [true; 5],
            letters => v2_permissions(letters)?,
        };
        let restriction = match query {
            None => Vec::new(),
            Some(query) => {
                let pairs = crate::fhir::query::pairs(query);
                if pairs.is_empty() || pairs.iter().any(|(name, value)| name.is_empty() || value.is_empty()) {
                    return None;
                }
                pairs
            }
        };
        Some(Scope { context, resource_type, permissions, restriction })
    }

    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions[Permission::ORDER.iter().position(|(_, candidate)| *candidate == permission).expect("known permission")]
    }

    pub fn covers_type(&self, resource_type: &str) -> bool {
        self.resource_type.as_deref().is_none_or(|name| name == resource_type)
    }
}

/// `cruds` letters in order, each at most once, at least one.
fn v2_permissions(letters: &str) -> Option<[bool; 5]> {
    let mut permissions = [false; 5];
    let mut next = 0;
    for letter in letters.chars() {
        let position = Permission::ORDER.iter().position(|(candidate, _)| *candidate == letter)?;
        if position < next {
            return None;
        }
        permissions[position] = true;
        next = position + 1;
    }
    permissions.iter().any(|granted| *granted).then_some(permissions)
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let context = match self.context {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        };
        let letters: String = Permission::ORDER
            .iter()
            .filter(|(_, permission)| self.allows(*permission))
            .map(|(_, permission)| permission.letter())
            .collect();
        write!(formatter, "{context}/{}.{letters}", self.resource_type.as_deref().unwrap_or("*"))?;
        for (position, (name, value)) in self.restriction.iter().enumerate() {
            write!(formatter, "{}{name}={value}", if position == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// The resource scopes of a token (`scope` claim, space separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    pub fn parse(text: &str) -> Scopes {
        Scopes(text.split_ascii_whitespace().filter_map(Scope::parse).collect())
    }

    /// Whether any scope grants any permission on any type.
    pub fn grants_anything(&self) -> bool {
        self.0.iter().any(|scope| scope.permissions.iter().any(|granted| *granted))
    }

    pub fn has_context(&self, context: ScopeContext) -> bool {
        self.0.iter().any(|scope| scope.context == context)
    }

    /// The scopes granting `permission` on `resource_type`. Empty: refused. A scope without a
    /// restriction among them grants the permission on every resource of the type; otherwise
    /// the resource must match at least one of their restrictions.
    pub fn granting(&self, resource_type: &str, permission: Permission) -> Vec<&Scope> {
        self.0.iter().filter(|scope| scope.covers_type(resource_type) && scope.allows(permission)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(scope: &str) -> String {
        Scope::parse(scope).map_or_else(|| "-".to_string(), |scope| scope.to_string())
    }

    #[test]
    fn v2_scopes() {
        assert_eq!(letters("patient/Observation.rs"), "patient/Observation.rs");
        assert_eq!(letters("user/*.cruds"), "user/*.cruds");
        assert_eq!(letters("system/Patient.r"), "system/Patient.r");
        assert_eq!(letters("patient/Observation.rs?category=laboratory"), "patient/Observation.rs?category=laboratory");
        let scope =
            Scope::parse("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory").unwrap();
        assert_eq!(
            scope.restriction,
            [("category".to_string(), "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_string())]
        );
        assert!(scope.allows(Permission::Read) && scope.allows(Permission::Search));
        assert!(!scope.allows(Permission::Create) && !scope.allows(Permission::Update) && !scope.allows(Permission::Delete));
    }

    #[test]
    fn v1_scopes_map_to_v2_permissions() {
        assert_eq!(letters("patient/Observation.read"), "patient/Observation.rs");
        assert_eq!(letters("user/*.write"), "user/*.cud");
        assert_eq!(letters("user/*.*"), "user/*.cruds");
    }

    #[test]
    fn malformed_scopes_grant_nothing() {
        for scope in [
            "patient/Observation.sr",  // out of order
            "patient/Observation.rr",  // repeated
            "patient/Observation.x",   // unknown letter
            "patient/Observation.",    // no permission
            "patient/Foo.rs",          // not a resource type
            "clinician/Patient.rs",    // unknown context
            "patient/Observation.rs?", // empty query
            "patient/Observation.rs?category=",
            "Observation.rs",
            "openid",
            "fhirUser",
            "launch/patient",
            "offline_access",
        ] {
            assert_eq!(Scope::parse(scope), None, "{scope}");
        }
    }

    #[test]
    fn granting_filters_by_type_and_permission() {
        let scopes = Scopes::parse("openid fhirUser patient/Observation.rs patient/Patient.r launch/patient");
        assert_eq!(scopes.0.len(), 2);
        assert_eq!(scopes.granting("Observation", Permission::Search).len(), 1);
        assert!(scopes.granting("Observation", Permission::Create).is_empty(), ".rs cannot create");
        assert!(scopes.granting("Patient", Permission::Search).is_empty(), ".r cannot search");
        assert!(scopes.granting("Condition", Permission::Read).is_empty());
        assert!(scopes.has_context(ScopeContext::Patient));
        assert!(!scopes.has_context(ScopeContext::User));
        let wildcard = Scopes::parse("user/*.cruds");
        assert_eq!(wildcard.granting("Condition", Permission::Delete).len(), 1);
    }
}
