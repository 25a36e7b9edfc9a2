//! Credentials never reach an output: a URL's userinfo password (`redis://user:pass@host`,
//! `https://u:p@prometheus`) is replaced by `***` before the URL goes into a log line, an Event,
//! the status, a metric or an error.

/// What a redacted password reads as.
pub const MASK: &str = "***";

/// `url` with its password replaced by [`MASK`] (`redis://user:***@host:6379/0`); the user name
/// stays. A URL that does not parse still leaks nothing: everything between `://` and the last
/// `@` is masked. A URL without `@` is returned unchanged.
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    if !url[scheme_end..].contains('@') {
        return url.to_string();
    }
    if let Ok(mut parsed) = url::Url::parse(url)
        && parsed.has_host()
        // A raw `/`, `?` or `#` in a password ends the authority early: the parser then sees
        // another host and the rest of the password after it. Only an `@`-free tail is trusted.
        && !parsed[url::Position::AfterHost..].contains('@')
    {
        if parsed.password().is_none() {
            // A user name alone is no secret.
            return url.to_string();
        }
        if parsed.set_password(Some(MASK)).is_ok() {
            return parsed.to_string();
        }
    }
    masked_userinfo(url, scheme_end)
}

/// Every URL inside `text` (an error message, a PromQL query) redacted with [`url`].
pub fn text(text: &str) -> String {
    if !text.contains("://") || !text.contains('@') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` right before `://`.
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || "+-.".contains(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || "\"'<>`".contains(c))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `scheme://***@host...`: the text between `://` and the last `@` masked.
fn masked_userinfo(url: &str, scheme_end: usize) -> String {
    let after = scheme_end + 3;
    match url[after..].rfind('@') {
        Some(at) => format!("{}{MASK}{}", &url[..after], &url[after + at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_masked_and_the_user_kept() {
        assert_eq!(
            url("redis://sirius:hunter2@valkey:6379/0"),
            "redis://sirius:***@valkey:6379/0"
        );
        assert_eq!(
            url("redis://:hunter2@valkey:6379"),
            "redis://:***@valkey:6379"
        );
        assert_eq!(
            url("https://u:p4ss@prometheus.monitoring.svc:9090/api"),
            "https://u:***@prometheus.monitoring.svc:9090/api"
        );
        assert_eq!(
            url("valkeys://a:b@[::1]:6380/2#insecure"),
            "valkeys://a:***@[::1]:6380/2#insecure"
        );
    }

    #[test]
    fn a_url_without_credentials_is_unchanged() {
        for u in [
            "redis://valkey:6379/0",
            "http://127.0.0.1:9001/host/",
            "http://localhost",
            "not a url",
            "",
        ] {
            assert_eq!(url(u), u);
        }
        // Only a user name: not a secret, kept.
        assert_eq!(
            url("redis://sirius@valkey:6379"),
            "redis://sirius@valkey:6379"
        );
    }

    #[test]
    fn awkward_passwords_never_show() {
        let cases = [
            ("redis://u:p@ss@valkey:6379", "p@ss"),
            ("redis://u:p%40ss%3A@valkey:6379", "p%40ss"),
            ("redis://u:a:b:c@valkey:6379", "a:b:c"),
            ("redis://u:pässwört@valkey:6379", "pässwört"),
            ("redis://u:p%C3%A4ss@valkey:6379", "p%C3%A4ss"),
            ("redis://u:se/cret@valkey:6379", "se/cret"),
            ("redis://u:se#cret@valkey:6379", "se#cret"),
            ("redis://u:se?cret@valkey:6379", "se?cret"),
            ("https://u:top secret@host", "top secret"),
            ("redis://u:secret@:notaport", "secret"),
            ("redis://u:secret@", "secret"),
            ("weird+scheme://u:secret@h%%%/x", "secret"),
        ];
        for (input, password) in cases {
            let out = url(input);
            assert!(!out.contains(password), "{input} -> {out}");
            assert!(out.contains(MASK), "{input} -> {out}");
        }
        // The host is still shown where the URL parses.
        assert_eq!(
            url("redis://u:p@ss@valkey:6379"),
            "redis://u:***@valkey:6379"
        );
        assert_eq!(
            url("redis://u:pässwört@valkey:6379"),
            "redis://u:***@valkey:6379"
        );
    }

    #[test]
    fn urls_inside_text_are_masked() {
        let msg = "request to https://u:hunter2@api:9001/host/ failed: connection refused; \
                   also \"redis://:pw@v:1\" and up{instance=\"http://a:b@c\"}";
        let out = text(msg);
        for secret in ["hunter2", ":pw@", "a:b@"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.starts_with("request to https://u:***@api:9001/host/ failed"));
        assert!(out.contains("\"redis://:***@v:1\""), "{out}");
        assert_eq!(text("no url here, a@b"), "no url here, a@b");
        assert_eq!(
            text("plain http://host/x@y"),
            "plain http://***@y",
            "an @ after the host is masked too: nothing can leak"
        );
    }
}
