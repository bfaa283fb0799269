//! The config file and env file parsers: any UTF-8 text gives a config or an error, never
//! a panic, and every error can be displayed.
#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use handover::settings::config_file::{parse, read_env_file};
use libfuzzer_sys::fuzz_target;

/// `read_env_file` takes a path, so the text goes into a memfd (no file left behind, no
/// disk I/O) that is read back through /proc/self/fd.
fn env_file() -> &'static (File, PathBuf) {
    static FILE: OnceLock<(File, PathBuf)> = OnceLock::new();
    FILE.get_or_init(|| {
        // SAFETY: a constant NUL-terminated name; the fd is checked, then owned by the File.
        let fd = unsafe { libc::memfd_create(c"fuzz.env".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        let file = unsafe { File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, path)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match parse(text, Path::new("fuzz.toml")) {
        Ok(cfg) => drop(format!("{cfg:?}")),
        Err(e) => drop(e.to_string()),
    }

    let (file, path) = env_file();
    let mut f = file;
    f.set_len(0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(f, data, 0).unwrap();
    f.flush().unwrap();
    match read_env_file(path) {
        Ok(vars) => {
            for (key, _) in &vars {
                assert!(!key.is_empty(), "an empty variable name was accepted");
                let bytes = std::os::unix::ffi::OsStrExt::as_bytes(key.as_os_str());
                assert!(
                    !bytes.contains(&b'=') && !bytes.contains(&0),
                    "bad variable name {key:?}"
                );
            }
        }
        Err(e) => drop(e.to_string()),
    }
});
