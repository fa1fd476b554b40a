//! Topic names and topic filters: validation and matching (MQTT 4.7).

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty topic or filter.
    #[error("empty topic")]
    Empty,
    /// Longer than the configured limit, in bytes.
    #[error("topic longer than {0} bytes")]
    TooLong(usize),
    /// More levels than the configured limit.
    #[error("topic has more than {0} levels")]
    TooManyLevels(usize),
    /// A wildcard in a topic name, or a misplaced wildcard in a filter.
    #[error("invalid wildcard use")]
    Wildcard,
    /// U+0000 in a topic.
    #[error("topic contains a NUL character")]
    Nul,
    /// A `$share/` filter without a valid group name or filter.
    #[error("invalid shared subscription")]
    Shared,
}

/// Limits that apply to every topic name and filter.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    /// Maximum length in bytes.
    pub max_len: usize,
    /// Maximum number of `/`-separated levels.
    pub max_levels: usize,
}

fn check_common(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_len {
        return Err(TopicError::TooLong(limits.max_len));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooManyLevels(limits.max_levels));
    }
    Ok(())
}

/// Validates a topic name as used in PUBLISH: no wildcards.
pub fn validate_name(name: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_common(name, limits)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Validates a topic filter as used in SUBSCRIBE: `+` fills a whole level,
/// `#` is a whole level and the last one.
pub fn validate_filter(filter: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_common(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let multi = level.contains('#');
        if (multi && (level != "#" || levels.peek().is_some()))
            || (level.contains('+') && level != "+")
        {
            return Err(TopicError::Wildcard);
        }
    }
    Ok(())
}

/// A subscription filter split into its share group (if any) and the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// Share group name for `$share/{group}/{filter}`.
    pub group: Option<&'a str>,
    /// The filter proper.
    pub filter: &'a str,
}

/// Splits `$share/group/filter` into its parts and validates both.
pub fn parse_filter(raw: &str, limits: TopicLimits) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::Shared)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::Shared);
        }
        validate_filter(filter, limits)?;
        Ok(ParsedFilter {
            group: Some(group),
            filter,
        })
    } else {
        validate_filter(raw, limits)?;
        Ok(ParsedFilter {
            group: None,
            filter: raw,
        })
    }
}

/// True if `topic` (a valid name) matches `filter` (a valid filter).
/// Topics starting with `$` are not matched by a leading wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic matched by `inner` is also matched by `outer`.
/// Used to check a subscription against an allow rule.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if some topic is matched by both filters. Used to check a
/// subscription against a deny rule.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: TopicLimits = TopicLimits {
        max_len: 64,
        max_levels: 8,
    };

    #[test]
    fn filter_validation() {
        for ok in ["a", "a/+/b", "#", "a/#", "+", "+/+", "/", "$SYS/#"] {
            assert!(validate_filter(ok, L).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "+a/b", "a/b#"] {
            assert!(validate_filter(bad, L).is_err(), "{bad}");
        }
        assert_eq!(validate_name("a/+", L), Err(TopicError::Wildcard));
        assert_eq!(
            validate_name("a/b/c/d/e/f/g/h/i", L),
            Err(TopicError::TooManyLevels(8))
        );
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/b", "a"));
    }

    #[test]
    fn shared_parse() {
        let p = parse_filter("$share/g1/a/+", L).unwrap();
        assert_eq!(p.group, Some("g1"));
        assert_eq!(p.filter, "a/+");
        assert!(parse_filter("$share/g1", L).is_err());
        assert!(parse_filter("$share//a", L).is_err());
    }

    #[test]
    fn cover_and_intersect() {
        assert!(covers("users/alice/#", "users/alice/inbox"));
        assert!(covers("users/+/x", "users/+/x"));
        assert!(!covers("users/+/x", "users/#"));
        assert!(!covers("users/alice/#", "users/#"));
        assert!(intersects("secret/#", "#"));
        assert!(intersects("a/+/c", "a/b/#"));
        assert!(!intersects("a/b", "a/c"));
    }
}
