//! Values written into unit files, escaped as systemd.syntax(7) and systemd.unit(5) read
//! them back: `%` starts a specifier everywhere (`%%` is a literal one), `$` starts a
//! variable in `ExecStart=` (`$$`), and in settings that are split into words (command
//! lines, `ReadWritePaths=`) a double-quoted word keeps spaces, with `\\` and `\"` inside.
//! Control characters (a newline would end the setting) are refused, not escaped.

use anyhow::bail;

/// Characters that never need quoting in a word.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/._+,:=@-".contains(c)
}

fn check(what: &str, s: &str) -> anyhow::Result<()> {
    if s.chars().any(char::is_control) {
        bail!(
            "{what} `{}` has a control character: a unit file cannot hold it (rename it)",
            s.escape_debug()
        );
    }
    Ok(())
}

/// One word of a command line (`ExecStart=`): quoted when it needs to be, `%` and `$`
/// doubled so that systemd expands neither.
pub fn exec_word(what: &str, s: &str) -> anyhow::Result<String> {
    word(what, s, true)
}

/// One path of a space-separated path list such as `ReadWritePaths=`.
pub fn list_path(what: &str, s: &str) -> anyhow::Result<String> {
    if !s.starts_with('/') {
        bail!("{what} `{s}` is not absolute: give the full path (systemd needs one)");
    }
    word(what, s, false)
}

fn word(what: &str, s: &str, dollars: bool) -> anyhow::Result<String> {
    check(what, s)?;
    let mut out = String::with_capacity(s.len() + 2);
    let quote = s.is_empty() || !s.chars().all(plain);
    if quote {
        out.push('"');
    }
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' if dollars => out.push_str("$$"),
            '\\' | '"' if quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    if quote {
        out.push('"');
    }
    Ok(out)
}

/// A value taken verbatim to the end of the line (`ListenStream=` with a socket path):
/// only specifiers are expanded there, so only `%` is doubled. Leading and trailing
/// blanks would be stripped, so they are refused.
pub fn verbatim(what: &str, s: &str) -> anyhow::Result<String> {
    check(what, s)?;
    if s.trim() != s {
        bail!("{what} `{s}` starts or ends with a blank: systemd would strip it (rename it)");
    }
    Ok(s.replace('%', "%%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd's reading of a command line, for the cases `word` writes: words split at
    /// blanks, double quotes with `\\`/`\"` inside, then `%%` → `%` and `$$` → `$`.
    fn systemd_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut chars = line.chars().peekable();
        loop {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            let Some(&first) = chars.peek() else {
                return words;
            };
            let mut w = String::new();
            if first == '"' {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
            }
            words.push(
                w.replace("%%", "\u{0}")
                    .replace("$$", "$")
                    .replace('\u{0}', "%"),
            );
        }
    }

    #[test]
    fn words_round_trip_through_systemds_rules() {
        let hard = [
            "/usr/bin/handover",
            "/srv/my app/current",
            "100%",
            "%h",
            "$HOME",
            "${X}",
            "back\\slash",
            "\"quoted\"",
            ";",
            "",
            "é ü",
        ];
        let line: Vec<String> = hard.iter().map(|w| exec_word("arg", w).unwrap()).collect();
        assert_eq!(systemd_words(&line.join(" ")), hard);
        assert_eq!(
            exec_word("p", "/usr/bin/handover").unwrap(),
            "/usr/bin/handover"
        );
        assert_eq!(exec_word("p", "/a b/%i$X").unwrap(), "\"/a b/%%i$$X\"");
    }

    #[test]
    fn paths_and_verbatim_values() {
        assert_eq!(
            list_path("p", "/srv/up loads/50%").unwrap(),
            "\"/srv/up loads/50%%\""
        );
        assert_eq!(list_path("p", "/srv/$x").unwrap(), "\"/srv/$x\"");
        assert!(
            list_path("p", "uploads")
                .unwrap_err()
                .to_string()
                .contains("not absolute")
        );
        assert_eq!(
            verbatim("s", "/run/my app/%.sock").unwrap(),
            "/run/my app/%%.sock"
        );
        assert!(
            verbatim("s", "/run/x ")
                .unwrap_err()
                .to_string()
                .contains("blank")
        );
        let e = exec_word("argument", "a\nb").unwrap_err().to_string();
        assert!(
            e.contains("argument `a\\nb` has a control character"),
            "{e}"
        );
    }
}
