//! The task driven by a test, with no worker process at all: the test feeds the loop its
//! inputs (`Fed`, in place of the manager's `Sources`) and plays the workers itself (a
//! fake `Hands` hands out pids that cannot exist and records the signals; the test says
//! when a worker is ready or exits). What it checks is what a client or an operator
//! sees: the control replies, the status line, the spawns and signals, the exit code.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser as _;
use nix::sys::signal::Signal;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::hands::{Hands, Spawn};
use super::inputs::{Input, Inputs, Wants};
use super::signals::Sig;
use super::upgrade::Upgrading;
use super::{Io, Task, cgroups, readiness};
use crate::interface::control::{Incoming, Reply, Request};
use crate::os::notify::{Systemd, WorkerNotifySocket};
use crate::os::spawn::WorkerEnv;
use crate::settings::cli::{Cli, Command, RunArgs};
use crate::settings::config::RunConfig;
use crate::supervisor::{Event, GenId, Machine};
use crate::takeover::Takeover;

/// Above any pid_max (2^22): no real process is ever touched by mistake.
const FIRST_PID: i32 = 5_000_000;

/// What the fake workers' side saw.
#[derive(Default)]
struct World {
    /// Every spawn: generation, slot, pid.
    spawned: Vec<(GenId, usize, i32)>,
    /// Every signal: pid, signal.
    signals: Vec<(i32, Signal)>,
}

impl World {
    fn pids(&self, generation: GenId) -> Vec<i32> {
        let of = self.spawned.iter().filter(|s| s.0 == generation);
        of.map(|s| s.2).collect()
    }
}

struct Fake(Rc<RefCell<World>>);

impl Hands for Fake {
    fn start_worker(&mut self, s: Spawn<'_, '_>) -> Result<i32, String> {
        let mut w = self.0.borrow_mut();
        let pid = FIRST_PID + w.spawned.len() as i32;
        w.spawned.push((s.who.generation, s.who.slot, pid));
        Ok(pid)
    }

    fn signal(&mut self, pid: i32, signal: Signal, _group: bool) {
        self.0.borrow_mut().signals.push((pid, signal));
    }
}

/// The inputs a test feeds. No clock runs: nothing times out unless the test says so.
struct Fed(UnboundedReceiver<Input>);

impl Inputs for Fed {
    async fn next(&mut self, _: &Wants, _: &mut Option<Upgrading>) -> anyhow::Result<Input> {
        (self.0.recv().await).ok_or_else(|| anyhow::anyhow!("the test fed nothing more"))
    }

    fn drain(&mut self) -> Vec<Input> {
        Vec::new()
    }
}

/// The test's end of the loop: it feeds inputs and sees the fake workers' side.
struct Feed {
    tx: UnboundedSender<Input>,
    world: Rc<RefCell<World>>,
}

impl Feed {
    fn send(&self, input: Input) {
        self.tx.send(input).expect("the loop runs");
    }

    fn event(&self, e: Event) {
        self.send(Input::Event(e));
    }

    /// Sends a control request; its replies come on the receiver.
    fn ask(&self, request: Request) -> UnboundedReceiver<Reply> {
        let (reply, rx) = mpsc::unbounded_channel();
        self.send(Input::Control(Incoming { request, reply }));
        rx
    }

    /// The first reply to `request`.
    async fn answer(&self, request: Request) -> Reply {
        self.ask(request).recv().await.expect("answered")
    }

    /// The status line, once everything fed before was taken.
    async fn status(&self) -> String {
        match self.answer(Request::Status).await {
            Reply::Status { status, .. } => status.status,
            other => panic!("not a status: {other:?}"),
        }
    }

    fn pids(&self, generation: GenId) -> Vec<i32> {
        self.world.borrow().pids(generation)
    }

    /// Waits until everything fed before was taken (a status request is answered in
    /// turn).
    async fn taken(&self) {
        self.status().await;
    }

    fn signalled(&self) -> Vec<(i32, Signal)> {
        self.world.borrow().signals.clone()
    }

    fn ready_all(&self, generation: GenId) {
        for pid in self.pids(generation) {
            self.event(Event::Ready { pid });
        }
    }

    fn exit_all(&self, pids: &[i32]) {
        for &pid in pids {
            let how = "exit status 0".to_owned();
            let group_left = false;
            self.event(Event::Exited {
                pid,
                how,
                group_left,
            });
        }
    }

    /// A manager serving gen 1, both workers ready.
    async fn serving(&self) {
        self.ready_all(1);
        assert_eq!(self.status().await, "gen 1: 2/2 ready");
    }
}

/// The outcome a waiting client is given, after its progress lines.
async fn outcome(rx: &mut UnboundedReceiver<Reply>) -> Reply {
    loop {
        match rx.recv().await.expect("an outcome") {
            Reply::Progress { .. } => continue,
            other => return other,
        }
    }
}

fn args() -> RunArgs {
    let argv = ["handover", "run", "--workers", "2", "--ready", "notify"];
    let cli = Cli::try_parse_from(argv.into_iter().chain(["--", "/bin/true"]));
    match cli.expect("a valid command line").command {
        Command::Run(args) => args,
        _ => unreachable!("a run command line"),
    }
}

fn parts<'a>(notify: &'a WorkerNotifySocket, path: &'a Path, world: &Rc<RefCell<World>>) -> Io<'a> {
    let args = args();
    let config = RunConfig::load(&args).expect("the test's configuration loads");
    Io {
        sockets: &[],
        notify,
        env: WorkerEnv {
            fds: Vec::new(),
            fd_names: Vec::new(),
            notify_socket: path,
        },
        listen: Some(config.listen.clone()),
        args,
        initial: Some(config),
        pid_file: None,
        systemd: Systemd::from_env(),
        control: None,
        cgroups: cgroups::Cgroups::off(),
        metrics: None,
        start_time: None,
        takeover: Takeover::new(&[], 0),
        guard: None,
        hands: Box::new(Fake(Rc::clone(world))),
        prober: readiness::Prober::new(&[]).expect("no socket to read"),
    }
}

/// Runs a fresh task beside `script`, which feeds it from the moment gen 1 serves (its
/// two workers ready); the task must then exit cleanly.
async fn serving<F: Future<Output = ()>>(script: impl FnOnce(Feed) -> F) {
    let script = |feed: Feed| async move {
        feed.serving().await;
        script(feed).await
    };
    assert_eq!(drive(script).await.expect("a clean exit"), 0);
}

/// Runs a fresh task beside `script`, which feeds it; returns the task's exit code.
async fn drive<F: Future<Output = ()>>(script: impl FnOnce(Feed) -> F) -> anyhow::Result<i32> {
    assert!(
        std::env::var_os("NOTIFY_SOCKET").is_none(),
        "the task's tests do not talk to systemd"
    );
    let notify = WorkerNotifySocket::create().expect("a notify socket");
    let path = notify.path().to_owned();
    let world = Rc::new(RefCell::new(World::default()));
    let mut task = Task::new(parts(&notify, &path, &world));
    let mut machine = Machine::new(
        task.io
            .initial
            .as_ref()
            .map(|c| c.settings.clone())
            .unwrap_or_default(),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = Feed { tx, world };
    let mut inputs = Fed(rx);
    let serve = task.serve(&mut machine, &mut inputs, VecDeque::from([Event::Start]));
    let both = async { tokio::join!(serve, script(feed)).0 };
    tokio::time::timeout(Duration::from_secs(20), both)
        .await
        .expect("the task exits in time")
}

#[tokio::test]
async fn a_reload_asked_during_an_upgrade_is_held_then_given_back_when_it_fails() {
    serving(|feed| async move {
        let mut upgrade = feed.ask(Request::Upgrade);
        // A waiting client cannot cross the exec: busy. The others are held.
        let busy = feed.answer(Request::Reload { wait: true }).await;
        assert!(matches!(busy, Reply::Busy { .. }), "{busy:?}");
        let held = feed.answer(Request::Reload { wait: false }).await;
        let line = "reload held: it runs right after the in-place upgrade under way";
        assert_eq!(held, Reply::ok(line));
        feed.send(Input::Signal(Sig::Hup));
        assert_eq!(feed.status().await, "gen 1: 2/2 ready", "nothing started");
        assert!(feed.pids(2).is_empty());
        // The new binary is refused: its client is told, and the reloads run here.
        feed.send(Input::Checked(Err("the new binary cannot be run".into())));
        let refused = upgrade.recv().await;
        assert_eq!(refused, Some(Reply::error("the new binary cannot be run")));
        assert_eq!(feed.pids(2).len(), 2, "the held reloads coalesce into one");
        feed.ready_all(2);
        feed.taken().await;
        let old = feed.pids(1);
        let stopped: Vec<i32> = feed.signalled().iter().map(|s| s.0).collect();
        assert_eq!(stopped, old, "gen 1 stops once gen 2 is ready");
        feed.exit_all(&old);
        // The second held reload follows the first.
        assert_eq!(feed.status().await, "gen 2: 2/2 ready, gen 3 starting 0/2");
        feed.send(Input::Signal(Sig::Quit));
        feed.exit_all(&[feed.pids(2), feed.pids(3)].concat());
    })
    .await;
}

#[tokio::test]
async fn a_stop_during_a_reload_rolls_it_back_and_stops_both_generations() {
    serving(|feed| async move {
        let mut client = feed.ask(Request::Reload { wait: true });
        assert_eq!(feed.status().await, "gen 1: 2/2 ready, gen 2 starting 0/2");
        let stop = feed.answer(Request::Stop).await;
        assert_eq!(stop, Reply::ok("stopping"));
        let told = outcome(&mut client).await;
        let why = "gen 2 rolled back, the old generation keeps serving: the manager is stopping";
        assert_eq!(told, Reply::error(why));
        feed.taken().await;
        let all = [feed.pids(1), feed.pids(2)].concat();
        let mut stopped: Vec<i32> = feed.signalled().iter().map(|s| s.0).collect();
        stopped.sort();
        assert_eq!(stopped, all, "both generations get their stop signal");
        feed.exit_all(&all);
    })
    .await;
}

#[tokio::test]
async fn a_control_client_that_disconnects_mid_reload_changes_nothing() {
    serving(|feed| async move {
        // The client goes away at once: its progress lines and outcome go nowhere.
        drop(feed.ask(Request::Reload { wait: true }));
        assert_eq!(feed.status().await, "gen 1: 2/2 ready, gen 2 starting 0/2");
        feed.ready_all(2);
        feed.exit_all(&feed.pids(1));
        assert_eq!(feed.status().await, "gen 2: 2/2 ready");
        // The next client is answered as always.
        let mut client = feed.ask(Request::Reload { wait: true });
        feed.taken().await;
        feed.ready_all(3);
        let told = outcome(&mut client).await;
        assert!(
            matches!(&told, Reply::Done { ok: true, message, .. } if message.starts_with("gen 3 serving")),
            "{told:?}"
        );
        feed.exit_all(&feed.pids(2));
        feed.send(Input::Signal(Sig::Term));
        feed.exit_all(&feed.pids(3));
    })
    .await;
}

#[tokio::test]
async fn a_stop_during_an_upgrade_cancels_it_and_the_manager_stops() {
    serving(|feed| async move {
        let mut upgrade = feed.ask(Request::Upgrade);
        feed.send(Input::Signal(Sig::Hup));
        feed.send(Input::Signal(Sig::Term));
        let cancelled = "the upgrade was cancelled: the manager is stopping";
        assert_eq!(upgrade.recv().await, Some(Reply::error(cancelled)));
        // The reload it held is given back to a stopping manager: nothing starts.
        assert_eq!(feed.status().await, "stopping: 2 workers left");
        assert!(feed.pids(2).is_empty());
        feed.exit_all(&feed.pids(1));
    })
    .await;
}

#[tokio::test]
async fn a_pause_is_answered_once_its_workers_are_gone_and_a_bad_one_at_once() {
    serving(|feed| async move {
        let zero = feed.answer(Request::Pause { max_ms: 0 }).await;
        assert_eq!(zero, Reply::error("pause: --max-pause must be above 0"));
        let mut client = feed.ask(Request::Pause { max_ms: 5000 });
        feed.taken().await;
        assert!(client.try_recv().is_err(), "it waits for the workers");
        feed.exit_all(&feed.pids(1));
        let paused = client.recv().await.expect("answered");
        let line =
            "paused: every worker of gen 1 stopped, connections queue until `handover resume`";
        assert_eq!(paused, Reply::ok(line));
        feed.send(Input::Signal(Sig::Int));
    })
    .await;
}
