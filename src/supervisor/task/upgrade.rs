//! The task's side of an in-place upgrade: check the new binary off the event loop, then
//! hand everything over and exec (`crate::os::upgrade` judges the checks and does the exec
//! itself; the machine decides what is held meanwhile: `machine/upgrade.rs`).
//!
//! An upgrade has two halves:
//!
//! 1. **The check**, a future the select loop polls beside everything else, so control
//!    requests, readiness probes, reaping, the watchdog and signals are all served while
//!    it runs: `upgrade-probe`, then the resume dry run (`upgrade-check -- ARGV` with the
//!    real handoff on stdin), each bounded by `CHECK_TIMEOUT`. Both are *private*
//!    children (see `reap.rs`): std children in their own process group, reaped by the
//!    task's one reaper, which hands their status back here. Dropping the check (a stop
//!    came in) kills the child's group.
//! 2. **The exec**, once the check passed: the handled signals are blocked, the runtime
//!    turns once so whatever tokio already took in reaches its streams, that and the
//!    queued control requests are drained, and only then the exec happens.
//!
//! The exec hands over the state as it is then, not as the dry run saw it (workers may
//! have been restarted meanwhile): the dry run proves the new binary takes this
//! manager's argv, configuration and a handoff of this shape and content; a state that
//! cannot be snapshotted at that moment refuses the upgrade.
//!
//! Meanwhile a reload or scale request (SIGHUP, TTIN/TTOU, `handover reload --no-wait`,
//! `handover scale`) is held by the machine and carried in the handoff: the new image
//! does it first. A `handover reload` that waits for its outcome is answered "busy"
//! instead, nothing queued (`machine/requests.rs`). A refused upgrade gives them back to
//! this image at once. A stop (SIGTERM, SIGINT, SIGQUIT, `handover stop`) cancels the
//! upgrade and drains and stops as always. The task tells the machine the upgrade began
//! (`UpgradeEvent::Begun`), will not happen (`Ended`) or is about to exec (`Exec`), and
//! carries out what it answers.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::Task;
use super::inputs::{Input, Inputs};
use super::reap;
use super::signals::drained_events;
use crate::interface::control::{Reply, Request};
use crate::os::notify::SdState;
use crate::os::upgrade::{self, Carried, Ended};
use crate::settings::config::RunConfig;
use crate::supervisor::machine::UpgradeEvent;
use crate::supervisor::{Event, Machine};

/// An upgrade under way: its check, who asked, and what waits for it.
pub(super) struct Upgrading {
    check: Pin<Box<dyn Future<Output = Result<(), String>>>>,
    /// `handover upgrade` clients: answered only if it does not happen (an exec closes
    /// their connection; they then see the new image in `handover status`).
    clients: Vec<UnboundedSender<Reply>>,
}

/// Resolves when the upgrade's check is done; never while there is none.
pub(super) async fn checked(upgrading: &mut Option<Upgrading>) -> Result<(), String> {
    match upgrading {
        Some(u) => (&mut u.check).await,
        None => std::future::pending().await,
    }
}

impl Task<'_> {
    /// Starts an upgrade (SIGUSR2, or `handover upgrade` whose replies go to `client`),
    /// and tells the machine, which holds reloads and scales meanwhile.
    pub(super) fn start_upgrade(
        &mut self,
        m: &Machine,
        client: Option<UnboundedSender<Reply>>,
        queue: &mut VecDeque<Event>,
    ) {
        if let Some(u) = &mut self.upgrading {
            tracing::info!("an upgrade is already under way");
            u.clients.extend(client);
            return;
        }
        let json = self
            .handoff(m, Vec::new())
            .and_then(|h| upgrade::encode(&h));
        let json = match json {
            Ok(j) => j,
            Err(why) => return refuse(&why, client),
        };
        // The new binary must load the configuration too, unless this one cannot either
        // (a broken config file is no reason to refuse an upgrade; the next reload says so).
        let config_loads = RunConfig::load(&self.io.args).is_ok();
        tracing::info!(
            "upgrading in place: checking the new binary {}",
            self.exe.display()
        );
        self.upgrading = Some(Upgrading {
            check: Box::pin(check(self.exe.clone(), json, config_loads)),
            clients: client.into_iter().collect(),
        });
        queue.push_back(Event::Upgrade(UpgradeEvent::Begun));
    }

    /// The upgrade did not (or will not) happen (the machine said so: `UpgradeAction::End`,
    /// which gives back what it held): `why` goes to its clients and the log.
    pub(super) fn end_upgrade(&mut self, why: &str) {
        let Some(u) = self.upgrading.take() else {
            return;
        };
        for c in u.clients {
            let _ = c.send(Reply::error(why));
        }
        tracing::error!("upgrade failed, this image keeps running: {why}");
    }

    /// The check is done: refuse, or exec. Returns only if this image keeps running (the
    /// machine is then told why, in `queue`).
    pub(super) async fn finish_upgrade(
        &mut self,
        checked: Result<(), String>,
        m: &mut Machine,
        inputs: &mut impl Inputs,
        queue: &mut VecDeque<Event>,
    ) {
        if let Err(why) = checked {
            return give_up(why, queue);
        }
        // The exec closes every connection the takeover holds: what it holds now is
        // answered first, or given up after a moment (see crate::takeover).
        self.io
            .takeover
            .settle(crate::takeover::UPGRADE_SETTLE)
            .await;
        // From here a signal stays pending in the kernel, and crosses the exec.
        upgrade::block_signals();
        if let Err(why) = self.last_turns(m, inputs, queue).await {
            upgrade::unblock_signals();
            return give_up(why, queue);
        }
        // One more turn: the answers given in the last one are written to their clients
        // (what arrives meanwhile is told "busy" right before the exec).
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let handoff = match self.handoff(m, m.held()) {
            Ok(h) => h,
            Err(why) => {
                upgrade::unblock_signals();
                return give_up(why, queue);
            }
        };
        tracing::info!("upgrading in place: exec {}", self.exe.display());
        let upgrading = format!("{}; upgrading handover in place", m.status());
        self.io
            .systemd
            .send(&[SdState::Reloading, SdState::Status(upgrading)]);
        // The new image starts with an empty queue: what waits goes first.
        self.io.systemd.settle();
        // What is still unanswered is answered as the machine says (busy).
        self.take(Event::Upgrade(UpgradeEvent::Exec), m, queue);
        // Returns only if the exec failed (and then unblocked the signals).
        let why = upgrade::exec(&self.exe, &handoff);
        self.io
            .systemd
            .send(&[SdState::Ready, SdState::Status(m.status())]);
        give_up(why, queue);
    }

    /// Turns of the runtime until nothing new comes in: a signal whose handler ran before
    /// the block reaches its stream, a request a connection task has read reaches the
    /// channel, and the answers given here reach their clients before the exec closes
    /// their connections. A short sleep, not `yield_now`: it parks the runtime on its
    /// drivers, so the signal pipe is surely read. What came in and the machine holds is
    /// held; anything else gives the upgrade up (`Err`: why), and is in `queue`.
    async fn last_turns(
        &mut self,
        m: &mut Machine,
        inputs: &mut impl Inputs,
        queue: &mut VecDeque<Event>,
    ) -> Result<(), String> {
        for _ in 0..5 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let came = self.came_in(m, inputs);
            if came.is_empty() && !self.waiters.any() {
                break;
            }
            let (held, rest): (Vec<Event>, Vec<Event>) = came.into_iter().partition(|e| m.holds(e));
            for e in held {
                self.take(e, m, queue);
            }
            if !rest.is_empty() {
                // A stop among them cancels the upgrade (the machine says so first).
                queue.extend(rest);
                return Err("requests came in at the last moment: try again".into());
            }
            // No client waits for a reload here: one in progress refuses the upgrade,
            // and one asked for during it was told "busy" (machine/requests.rs). Should
            // one wait all the same, it is told nothing ran, which is true.
            self.waiters
                .fail_all("the manager is upgrading itself; nothing was queued: reload again");
        }
        Ok(())
    }

    /// The events of what came in and was not handed out yet; control requests are
    /// answered as in the loop.
    fn came_in(&mut self, m: &Machine, inputs: &mut impl Inputs) -> VecDeque<Event> {
        let mut came = VecDeque::new();
        let mut sigs = Vec::new();
        for input in inputs.drain() {
            match input {
                Input::Signal(sig) => sigs.push(sig),
                Input::Control(i) if i.request == Request::Upgrade => {
                    self.start_upgrade(m, Some(i.reply), &mut came)
                }
                Input::Control(i) => self.on_control(i, m, &mut came),
                _ => {}
            }
        }
        let mut events: VecDeque<Event> = drained_events(&sigs).into();
        events.extend(came);
        events
    }

    /// Everything the new image needs, as of now.
    fn handoff(&self, m: &Machine, pending: Vec<Carried>) -> Result<upgrade::Handoff, String> {
        let now = Instant::now();
        Ok(upgrade::Handoff {
            version: upgrade::HANDOFF_VERSION,
            sockets: (self.io.sockets.iter())
                .map(|s| upgrade::SocketHandoff {
                    fd: s.fd.as_raw_fd(),
                    name: s.name.clone(),
                    address: s.address.clone(),
                    unlink: s.unlink_path().map(ToOwned::to_owned),
                    takeover: s.takeover,
                })
                .collect(),
            notify_fd: self.io.notify.as_fd().as_raw_fd(),
            notify_dir: self.io.notify.directory().to_owned(),
            control: (self.io.control.as_ref()).map(|(fd, p)| (fd.as_raw_fd(), p.clone())),
            supervisor: m.snapshot(now)?,
            last_reload: self.last_reload_info(now),
            upgrades: self.upgrades + 1,
            pending,
            worker_nofile: crate::os::fdlimit::limits().map(|l| l.worker_soft),
            log_pipes: self.outputs.handoff(),
            takeover: self.io.takeover.totals(),
            statuses: self.statuses.carried(),
            guard_fd: self.io.guard.as_ref().map(crate::os::guard::Guard::raw_fd),
            files: Some(upgrade::Files {
                pid_file: self.io.pid_file.clone(),
                metrics_file: (self.io.metrics.as_ref()).map(|p| p.file.path().to_owned()),
            }),
        })
    }
}

/// The upgrade will not happen: the machine is told, and gives back what it held.
fn give_up(why: String, queue: &mut VecDeque<Event>) {
    queue.push_back(Event::Upgrade(UpgradeEvent::Ended { why }));
}

fn refuse(why: &str, client: Option<UnboundedSender<Reply>>) {
    tracing::error!("upgrade failed, this image keeps running: {why}");
    if let Some(c) = client {
        let _ = c.send(Reply::error(why));
    }
}

/// The new binary's probe, then its resume dry run with this manager's argv and `json`.
async fn check(exe: PathBuf, json: Vec<u8>, config_loads: bool) -> Result<(), String> {
    let mut probe = Command::new(&exe);
    probe
        .args([
            "upgrade-probe",
            "--speaks",
            &upgrade::HANDOFF_VERSION.to_string(),
        ])
        .stdin(Stdio::null());
    let (ended, out, err) = run_private(probe, &exe, "`upgrade-probe`").await?;
    upgrade::judge_probe(&exe, &ended, &out, &err)?;
    let mut dry = Command::new(&exe);
    dry.arg("upgrade-check");
    if config_loads {
        dry.arg("--config-loads");
    }
    dry.arg("--").args(std::env::args_os());
    dry.stdin(upgrade::memfd(&json, true)?);
    let (ended, out, err) = run_private(dry, &exe, "its resume check").await?;
    upgrade::judge_check(&exe, &ended, &out, &err)
}

/// Kills a private child's process group unless it was reaped already.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Unreaped, so the group id (the child's pid) is still ours.
        if reap::is_private(self.0) {
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Runs `cmd` as a private child (own process group, the environment a new image would
/// get minus handover's line to systemd) and collects how it ended and what it printed,
/// within `CHECK_TIMEOUT`. No `pre_exec` (e.g. for PR_SET_PDEATHSIG): it would make std
/// fork and `execvp`, which runs a file that is not an executable through /bin/sh
/// instead of failing with ENOEXEC; the timeout bounds the child instead.
async fn run_private(
    mut cmd: Command,
    exe: &std::path::Path,
    what: &str,
) -> Result<(Ended, Vec<u8>, Vec<u8>), String> {
    cmd.env_clear()
        .envs(upgrade::exec_env())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("the new binary {} cannot be run: {e}", exe.display()))?;
    let pid = child.id() as i32;
    // Registered before this task yields, so the reaper cannot miss it.
    let exited = reap::watch_private(pid);
    let _kill = KillOnDrop(pid);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    // Never waited on through std: the task's reaper owns every child's status.
    drop(child);
    let work = async {
        let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), exited);
        let ended = match status {
            Ok(WaitStatus::Exited(_, code)) => Ended::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Ended::Signaled(sig.to_string()),
            Ok(other) => Ended::Signaled(format!("{other:?}")),
            Err(_) => Ended::Signaled("an unknown status".to_owned()),
        };
        (ended, out, err)
    };
    tokio::time::timeout(upgrade::CHECK_TIMEOUT, work)
        .await
        .map_err(|_| upgrade::timed_out(exe, what))
}

/// Reads a child's pipe to its end, so it never blocks on a full pipe; the first 64 KiB
/// are kept.
async fn read_all(pipe: Option<OwnedFd>) -> Vec<u8> {
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let Some(Ok(mut rx)) = pipe.map(tokio::net::unix::pipe::Receiver::from_owned_fd) else {
        return kept;
    };
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = rx.read(&mut chunk).await {
        let room = KEEP.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&chunk[..room]);
    }
    kept
}
