//! `--listen` specs: the text a user writes (`[NAME=]ADDRESS[,OPTION…]`: TCP, `udp:`,
//! `unix:` with `mode=`, `nodelay=`, `takeover=`) parsed into a `ListenSpec`, and
//! written back (`spec_text`) for messages and fd-store names. Parsing only: no socket
//! is touched, so every error is a message that says what to write instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a socket comes from, as the user wrote it in `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub name: Option<String>,
    pub kind: SpecKind,
    /// `,takeover=off` turns the takeover (`crate::takeover`) off for this socket alone
    /// (a stream socket whose clients speak something else than HTTP/1.x, say).
    pub takeover: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecKind {
    /// `nodelay` (default on, `,nodelay=false` turns it off): TCP_NODELAY on the listening
    /// socket, which Linux copies to every accepted connection. Servers handed an fd
    /// (uvicorn `--fd 3`, …) never set it themselves, and without it each small response
    /// waits for the client's delayed ACK (uvicorn: 7 % of its throughput).
    Tcp {
        addr: SocketAddr,
        nodelay: bool,
    },
    Udp(SocketAddr),
    Unix {
        path: PathBuf,
        mode: Option<u32>,
    },
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = match s.split_once('=') {
            Some((n, r)) if !n.is_empty() && !n.contains([':', '/', ',']) => (Some(n), r),
            _ => (None, s),
        };
        if let Some(n) = name
            && !n.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!("`{s}`: the name `{n}` must be printable ASCII"));
        }
        let (rest, takeover) = split_takeover(rest);
        let kind = parse_kind(&rest).and_then(|kind| match (kind, &takeover) {
            (SpecKind::Udp(_), Some(_)) => Err("takeover= applies to stream sockets only".into()),
            (kind, _) => Ok(kind),
        });
        let kind = kind.map_err(|why| {
            format!(
                "`{s}` is not a listen spec ({why}): use 127.0.0.1:8080, [::]:80, \
                 127.0.0.1:8080,nodelay=false, 127.0.0.1:8080,takeover=off, \
                 udp:127.0.0.1:5353 or unix:/run/app.sock[,mode=0660]"
            )
        })?;
        Ok(ListenSpec {
            name: name.map(str::to_owned),
            kind,
            takeover: takeover.unwrap_or(Ok(true))?,
        })
    }
}

/// `rest` without its `takeover=` options, and the last one's value.
fn split_takeover(rest: &str) -> (String, Option<Result<bool, String>>) {
    let mut takeover = None;
    let kept: Vec<&str> = rest
        .split(',')
        .filter(|opt| match opt.strip_prefix("takeover=") {
            Some(v) => {
                takeover = Some(crate::settings::values::parse_switch(v).map_err(|e| {
                    format!("`{rest}`: takeover={v}: {e} (takeover=off turns it off)")
                }));
                false
            }
            None => true,
        })
        .collect();
    (kept.join(","), takeover)
}

fn parse_kind(s: &str) -> Result<SpecKind, String> {
    let addr = |a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|_| format!("`{a}` is not an IP address with a port"))
    };
    if let Some(rest) = s.strip_prefix("unix:") {
        let mut parts = rest.split(',');
        // split always yields at least one item.
        let path = parts.next().unwrap_or_default();
        if !path.starts_with('/') {
            return Err("a unix socket path must be absolute".into());
        }
        let mut mode = None;
        for opt in parts {
            let m = opt
                .strip_prefix("mode=")
                .ok_or(format!("unknown option `{opt}`"))?;
            let m = u32::from_str_radix(m, 8).map_err(|_| format!("mode `{m}` is not octal"))?;
            if m > 0o777 {
                return Err(format!("mode {m:o} is above 0777"));
            }
            mode = Some(m);
        }
        return Ok(SpecKind::Unix {
            path: path.into(),
            mode,
        });
    }
    if let Some(rest) = s.strip_prefix("udp:") {
        return addr(rest).map(SpecKind::Udp);
    }
    let mut parts = s.strip_prefix("tcp:").unwrap_or(s).split(',');
    // split always yields at least one item.
    let addr = addr(parts.next().unwrap_or_default())?;
    let mut nodelay = true;
    for opt in parts {
        nodelay = match opt {
            "nodelay=true" => true,
            "nodelay=false" => false,
            _ if opt.starts_with("nodelay=") => {
                return Err(format!(
                    "`{opt}`: use nodelay=false to turn TCP_NODELAY off (on by default)"
                ));
            }
            _ => return Err(format!("unknown option `{opt}`")),
        };
    }
    Ok(SpecKind::Tcp { addr, nodelay })
}

pub fn spec_text(spec: &ListenSpec) -> String {
    match &spec.kind {
        SpecKind::Tcp { addr, .. } => addr.to_string(),
        SpecKind::Udp(a) => format!("udp:{a}"),
        SpecKind::Unix { path, .. } => format!("unix:{}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let tcp = |s: &str| ListenSpec::from_str(s).unwrap().kind;
        let on = |a: &str| SpecKind::Tcp {
            addr: a.parse().unwrap(),
            nodelay: true,
        };
        assert_eq!(tcp("127.0.0.1:8080"), on("127.0.0.1:8080"));
        assert_eq!(tcp("[::]:80"), on("[::]:80"));
        assert_eq!(tcp("tcp:0.0.0.0:1"), on("0.0.0.0:1"));
        assert_eq!(
            tcp("[::1]:80,nodelay=false"),
            SpecKind::Tcp {
                addr: "[::1]:80".parse().unwrap(),
                nodelay: false
            }
        );
        assert_eq!(tcp("http=tcp:0.0.0.0:1,nodelay=true"), on("0.0.0.0:1"));
        assert_eq!(
            tcp("udp:127.0.0.1:53"),
            SpecKind::Udp("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            tcp("unix:/run/a.sock,mode=0660"),
            SpecKind::Unix {
                path: "/run/a.sock".into(),
                mode: Some(0o660)
            }
        );
        let named = ListenSpec::from_str("http=127.0.0.1:80").unwrap();
        assert_eq!(named.name.as_deref(), Some("http"));
        for bad in [
            "8080",
            "localhost:80",
            "unix:rel.sock",
            "unix:/a,mode=999",
            "udp:x",
            "127.0.0.1:80,mode=0660",
        ] {
            let e = ListenSpec::from_str(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("use 127.0.0.1:8080"), "{e}");
        }
    }

    #[test]
    fn takeover_is_on_unless_a_stream_spec_turns_it_off() {
        let spec = |t: &str| ListenSpec::from_str(t);
        assert!(spec("127.0.0.1:80").unwrap().takeover);
        let off = spec("web=127.0.0.1:80,takeover=off,nodelay=false").unwrap();
        assert!(!off.takeover);
        assert_eq!(off.name.as_deref(), Some("web"));
        assert!(matches!(off.kind, SpecKind::Tcp { nodelay: false, .. }));
        let unix = spec("unix:/run/a.sock,takeover=off,mode=0660").unwrap();
        assert!(!unix.takeover);
        assert!(matches!(
            unix.kind,
            SpecKind::Unix {
                mode: Some(0o660),
                ..
            }
        ));
        let udp = spec("udp:127.0.0.1:53,takeover=off").unwrap_err();
        assert!(udp.contains("stream sockets only"), "{udp}");
        let bad = spec("127.0.0.1:80,takeover=maybe").unwrap_err();
        assert!(bad.contains("takeover=off turns it off"), "{bad}");
    }

    #[test]
    fn a_bad_nodelay_value_says_what_to_use() {
        let e = ListenSpec::from_str("127.0.0.1:80,nodelay=no").unwrap_err();
        assert!(
            e.contains("`127.0.0.1:80,nodelay=no`") && e.contains("use nodelay=false"),
            "{e}"
        );
    }
}
