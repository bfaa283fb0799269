//! How `handover reload` shows a reload's progress where it is read.
//!
//! On a terminal one line is rewritten in place as workers become ready. Anywhere else
//! (the journal, under `ExecReload=`; a CI log; a pipe) every rewrite would be a line of
//! its own: a reload of 16 workers used to write 18. There the first line of each part of
//! the reload ("starting", "probation") is printed and the rest are dropped, so a reload
//! of any size writes at most three lines with its outcome (a fourth says why a reload
//! goes in batches, when it does). The "loading" part says nothing a reader needs and
//! is left out.

use std::io::Write;

pub struct Progress<W: Write> {
    out: W,
    tty: bool,
    /// The part whose first line was printed last (off a terminal).
    shown: Option<String>,
    /// Something was printed without a line break (on a terminal).
    pending: bool,
    /// A line without a part was printed.
    shown_unphased: bool,
}

impl<W: Write> Progress<W> {
    pub fn new(out: W, tty: bool) -> Progress<W> {
        Progress {
            out,
            tty,
            shown: None,
            pending: false,
            shown_unphased: false,
        }
    }

    /// One progress line from the manager, with the part of the reload it belongs to.
    pub fn line(&mut self, message: &str, phase: Option<&str>) {
        // A closed or full stderr must not fail the reload it reports on.
        if self.tty {
            let _ = write!(self.out, "\r\x1b[K{message}");
            let _ = self.out.flush();
            self.pending = true;
            return;
        }
        let new_part = match phase {
            Some("loading") => false,
            // Why a reload goes in batches: sent once, printed as it is, and the part it
            // interrupts ("starting") goes on without a line of its own again.
            Some("pacing") => {
                let _ = writeln!(self.out, "{message}");
                return;
            }
            Some(p) => self.shown.as_deref() != Some(p),
            // After the last part (the workers are promoted) or from a manager older
            // than the field: shown only when nothing else was.
            None => self.shown.is_none() && !std::mem::replace(&mut self.shown_unphased, true),
        };
        if new_part {
            self.shown = phase.map(String::from);
            let _ = writeln!(self.out, "{message}");
        }
    }

    /// Clears the rewritten line before the outcome is printed.
    pub fn finish(&mut self) {
        if self.tty && self.pending {
            let _ = write!(self.out, "\r\x1b[K");
            let _ = self.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload of 16 workers with a probation, as the manager reports it.
    fn reload_of_16(p: &mut Progress<&mut Vec<u8>>) {
        p.line(
            "gen 1: 16/16 ready, gen 2 loading configuration",
            Some("loading"),
        );
        for i in 0..16 {
            p.line(
                &format!("gen 1: 16/16 ready, gen 2 starting {i}/16"),
                Some("starting"),
            );
        }
        for i in 0..4 {
            p.line(
                &format!("gen 1: 16/16 ready, gen 2 on probation 16/16, gen 1 draining {i}"),
                Some("probation"),
            );
        }
        // Promoted: the reload's last status line has no part.
        p.line("gen 2: 16/16 ready, gen 1 draining 16", None);
        p.finish();
    }

    #[test]
    fn off_a_terminal_each_part_of_a_reload_is_one_line() {
        let mut out = Vec::new();
        reload_of_16(&mut Progress::new(&mut out, false));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "gen 1: 16/16 ready, gen 2 starting 0/16\n\
             gen 1: 16/16 ready, gen 2 on probation 16/16, gen 1 draining 0\n"
        );
    }

    #[test]
    fn on_a_terminal_the_line_is_rewritten_and_cleared_at_the_end() {
        let mut out = Vec::new();
        reload_of_16(&mut Progress::new(&mut out, true));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 0);
        assert!(text.ends_with("draining 16\r\x1b[K"), "{text:?}");
    }

    #[test]
    fn an_older_manager_without_parts_gets_one_line() {
        let mut out = Vec::new();
        let mut p = Progress::new(&mut out, false);
        p.line("gen 2 starting 0/2", None);
        p.line("gen 2 starting 1/2", None);
        assert_eq!(String::from_utf8(out).unwrap(), "gen 2 starting 0/2\n");
    }
}
