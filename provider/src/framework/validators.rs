//! Validators: small, described objects that check one known, non-null attribute value
//! (terraform-plugin-framework's `validator` with its `Describer`). Each failure is a message
//! that says what is wrong and what is accepted.

use std::sync::Arc;
use std::time::Duration;

use super::value::Value;

/// Checks one attribute value.
pub trait Validate: Send + Sync {
    /// What it accepts, in Markdown, for docs and editors ("must be one of ...").
    fn description(&self) -> String;

    /// Checks `value` (known, not null).
    ///
    /// # Errors
    /// The message for the user, completing "<attribute> ...": what was wrong, how to fix it.
    fn validate(&self, value: &Value) -> Result<(), String>;
}

/// A shared validator.
pub type Validator = Arc<dyn Validate>;

struct Check<F> {
    description: String,
    check: F,
}

impl<F: Fn(&Value) -> Result<(), String> + Send + Sync> Validate for Check<F> {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn validate(&self, value: &Value) -> Result<(), String> {
        (self.check)(value)
    }
}

/// A validator that accepts what `description` says and checks it with `check`.
#[must_use]
pub fn check(
    description: impl Into<String>,
    check: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
) -> Validator {
    Arc::new(Check {
        description: description.into(),
        check,
    })
}

/// The value is one of `allowed`.
#[must_use]
pub fn one_of(allowed: &'static [&'static str]) -> Validator {
    check(format!("One of {}.", quoted_list(allowed)), move |value| {
        match value.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => Err(format!("must be one of {}", quoted_list(allowed))),
        }
    })
}

/// The string is not empty or blank.
#[must_use]
pub fn not_blank() -> Validator {
    check("Not empty or blank.", |value| match value.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(()),
        _ => Err("must not be empty".into()),
    })
}

/// The string is a duration such as `90s`, `10m` or `1h30m`.
#[must_use]
pub fn duration() -> Validator {
    check("A duration such as `90s`, `10m` or `1h30m`.", |value| {
        parse_duration(value.as_str().unwrap_or_default()).map(|_| ())
    })
}

/// The string is an `http://` or `https://` URL with a host; `example` shows a good one.
#[must_use]
pub fn http_url(example: impl Into<String>) -> Validator {
    let example = example.into();
    check(
        format!("An `http://` or `https://` URL such as `{example}`."),
        move |value| {
            let Some(url) = value.as_str() else { return Ok(()) };
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
            match host {
                Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(()),
                _ => Err(format!("is {url:?}; give an http:// or https:// URL such as {example}")),
            }
        },
    )
}

fn quoted_list(items: &[&str]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// Parses a Go-style duration: one or more `<number><unit>` with units `ms`, `s`, `m`, `h`.
///
/// # Errors
/// A message with an example of the accepted form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration; write it like \"90s\", \"10m\" or \"1h30m\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = unit
            .checked_mul(u32::try_from(number).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// A whole number from `min` to `max`.
#[must_use]
pub fn int_between(min: i64, max: i64) -> Validator {
    check(
        format!("A whole number from {min} to {max}."),
        move |value: &Value| match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            Some(n) => Err(format!("is {n}; it must be from {min} to {max}")),
            None => Err(format!("must be a whole number from {min} to {max}")),
        },
    )
}

/// A whole number (Terraform numbers may have fractions; counts and times here do not).
#[must_use]
pub fn whole_number() -> Validator {
    check("A whole number.", |value: &Value| match value.as_i64() {
        Some(_) => Ok(()),
        None => Err("must be a whole number".into()),
    })
}

/// A map of PCR index (`"0"` to `"31"`) to a SHA-384 value (96 hex digits).
#[must_use]
pub fn pcr_map() -> Validator {
    check(
        "PCR index (`\"0\"` to `\"31\"`) to SHA-384 value (96 hex digits).",
        |value: &Value| {
            for (index, pcr) in value.as_map().into_iter().flatten() {
                if index.parse::<u8>().map_or(true, |i| i > 31) {
                    return Err(format!("has key {index:?}; keys are PCR indexes from \"0\" to \"31\""));
                }
                let hex_ok = pcr
                    .as_str()
                    .is_some_and(|h| h.len() == 96 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !hex_ok {
                    return Err(format!("[{index:?}] must be a SHA-384 PCR value: 96 hex digits"));
                }
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_terraform_timeouts() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m15s").unwrap(), Duration::from_secs(5415));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "10", "m", "10 minutes", "-5s", "1.5h", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_of_lists_the_choices() {
        let v = one_of(&["local", "aws"]);
        assert!(v.validate(&Value::string("local")).is_ok());
        assert_eq!(
            v.validate(&Value::string("gcp")).unwrap_err(),
            "must be one of \"local\", \"aws\""
        );
    }

    #[test]
    fn http_urls_need_a_scheme_and_a_host() {
        let v = http_url("http://10.0.1.5:8443");
        for good in [
            "http://10.0.1.5:8443",
            "https://ec2.eu-west-1.amazonaws.com/",
            "http://localhost",
        ] {
            assert!(v.validate(&Value::string(good)).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:5000",
            "ftp://host",
            "http://",
            "https:///path",
            "http:// host",
            "",
        ] {
            let message = v.validate(&Value::string(bad)).unwrap_err();
            assert!(message.contains("such as http://10.0.1.5:8443"), "{bad}: {message}");
        }
    }
}
