//! Prefixing a worker's output line by line (`log_prefix`): bytes in as the pipe gives
//! them, whole prefixed lines out. Pure, so its edge cases are unit tests: a line split
//! over reads, a partial last line at end of file (a worker that died mid-line), a line
//! longer than any buffer.

/// A line longer than this is cut into pieces of this size, each prefixed (journald cuts
/// at its LineMax= the same way): a worker printing without newlines cannot make the
/// manager hold an unbounded buffer.
pub const MAX_LINE: usize = 16 * 1024;

/// One stream's state: its prefix and the start of a line not yet ended.
pub struct Lines {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl Lines {
    /// `prefix` is written before every line, e.g. `gen=3 slot=0 pid=1234 `.
    pub fn new(prefix: String) -> Lines {
        Lines {
            prefix: prefix.into_bytes(),
            partial: Vec::new(),
        }
    }

    /// Appends to `out` every line `data` completes, prefixed, and keeps the rest.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(end + 1);
            out.extend_from_slice(&self.prefix);
            if !self.partial.is_empty() {
                out.append(&mut self.partial);
            }
            out.extend_from_slice(line);
            data = rest;
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.emit(out);
            self.partial = rest;
        }
    }

    /// End of the stream: a last line without its newline is written with one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.append(&mut self.partial);
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> String {
        let mut lines = Lines::new("p ".into());
        let mut out = Vec::new();
        for c in chunks {
            lines.push(c, &mut out);
        }
        lines.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn whole_lines_are_prefixed_one_by_one() {
        assert_eq!(run(&[b"a\nb\n"]), "p a\np b\n");
        assert_eq!(run(&[b"\n"]), "p \n");
        assert_eq!(run(&[]), "");
    }

    #[test]
    fn a_line_split_over_reads_is_one_line() {
        assert_eq!(run(&[b"hel", b"lo\nwor", b"ld\n"]), "p hello\np world\n");
    }

    #[test]
    fn a_partial_last_line_ends_with_the_stream() {
        assert_eq!(run(&[b"done\ncut sh"]), "p done\np cut sh\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_into_prefixed_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let out = run(&[&long, b"\n"]);
        let pieces: Vec<&str> = out.lines().collect();
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.starts_with("p x")));
        assert_eq!(pieces[2], "p xxxxx");
    }
}
