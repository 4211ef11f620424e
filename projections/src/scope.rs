//! Which streams a query may see: the stream prefixes its token grants `query` on.

/// The streams a query may read. Streams whose names start with `$` hold Fjord's own state (named
/// subscriptions' checkpoints, registries) and are never part of a query's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamScope {
    prefixes: Vec<String>,
}

impl StreamScope {
    /// Every stream (the empty prefix).
    pub fn all() -> Self {
        StreamScope { prefixes: vec![String::new()] }
    }

    /// The streams starting with one of `prefixes` (none: no stream at all).
    pub fn prefixes(prefixes: impl IntoIterator<Item = String>) -> Self {
        StreamScope { prefixes: prefixes.into_iter().collect() }
    }

    /// Whether a query may read `stream`.
    pub fn allows(&self, stream: &str) -> bool {
        !stream.starts_with('$') && self.prefixes.iter().any(|prefix| stream.starts_with(prefix.as_str()))
    }

    /// The prefixes this scope grants.
    pub fn granted(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether this scope covers every stream `other` allows: each of `other`'s prefixes starts with one
    /// of this scope's.
    pub fn covers(&self, other: &StreamScope) -> bool {
        other.prefixes.iter().all(|wanted| self.prefixes.iter().any(|prefix| wanted.starts_with(prefix.as_str())))
    }

    /// Whether this scope allows every stream a query can see.
    pub fn is_all(&self) -> bool {
        self.prefixes.iter().any(String::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_its_prefixes_and_never_internal_streams() {
        let scope = StreamScope::prefixes(["order-".to_owned(), "cart-".to_owned()]);
        assert!(scope.allows("order-1") && scope.allows("cart-9"));
        assert!(!scope.allows("user-1") && !scope.is_all());
        assert!(StreamScope::all().allows("user-1") && StreamScope::all().is_all());
        assert!(!StreamScope::all().allows("$subscriptions"));
        assert!(!StreamScope::prefixes([]).allows("order-1"));
    }
}
