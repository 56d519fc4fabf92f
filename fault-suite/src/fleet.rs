//! The three services as child processes of the suite, one or more instances of each,
//! each started as `fault-suite serve <service>` (the very code path of the service's own
//! binary), killed with SIGKILL when the schedule says so and started again at once, as a
//! supervisor would. A service that stops on its own (it gives up on a dependency that
//! stayed down) is started again too, and counted.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use anyhow::Context;
use clap::ValueEnum;
use test_support::watchdog::{Watchdog, shell_quote};

/// A service of the shop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ServiceName {
    CommandApi,
    Projections,
    SagaOrchestrator,
}

impl ServiceName {
    pub const ALL: [Self; 3] = [Self::CommandApi, Self::Projections, Self::SagaOrchestrator];

    /// The variable that says where the service listens.
    pub fn addr_variable(self) -> &'static str {
        match self {
            Self::CommandApi => "COMMAND_API_ADDR",
            Self::Projections => "PROJECTIONS_ADDR",
            Self::SagaOrchestrator => "SAGA_ORCHESTRATOR_ADDR",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CommandApi => command_api::NAME,
            Self::Projections => projections::NAME,
            Self::SagaOrchestrator => saga_orchestrator::NAME,
        }
    }
}

/// What happened to one service during the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// SIGKILLs the schedule dealt.
    pub kills: u32,
    /// Times it stopped by itself and was started again.
    pub own_exits: u32,
}

/// One instance of a service: which, and its number (0, 1, ...).
pub type Instance = (ServiceName, usize);

#[derive(Debug)]
struct Member {
    child: Child,
    tally: Tally,
    /// Where it listens.
    addr: String,
    /// Whether it is meant to run (false once stopped for good).
    supervised: bool,
}

/// The running services.
#[derive(Debug)]
pub struct Fleet {
    exe: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
    members: Mutex<BTreeMap<Instance, Member>>,
    /// Marks this run's processes on their command line (`serve ... --stand <id>`).
    stand: String,
    /// Kills them should the suite end without `Drop`.
    _watchdog: Watchdog,
}

impl Fleet {
    /// Starts every instance in `addrs` with `env` and its own address, each logging to
    /// `<logs>/<service>.log` (the first instance) or `<logs>/<service>-<n+1>.log`.
    pub fn start(
        env: Vec<(String, String)>,
        logs: PathBuf,
        addrs: &BTreeMap<Instance, String>,
    ) -> anyhow::Result<Self> {
        let stand = uuid::Uuid::new_v4().simple().to_string();
        let watchdog = Watchdog::arm(&format!(
            "pkill -KILL -f -- {}",
            shell_quote(&format!("--stand {stand}"))
        ));
        let fleet = Self {
            exe: std::env::current_exe().context("the suite's own executable")?,
            env,
            logs,
            members: Mutex::default(),
            stand,
            _watchdog: watchdog,
        };
        for (&instance, addr) in addrs {
            let child = fleet.spawn(instance, addr)?;
            fleet.lock().insert(
                instance,
                Member {
                    child,
                    tally: Tally::default(),
                    addr: addr.clone(),
                    supervised: true,
                },
            );
        }
        Ok(fleet)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Instance, Member>> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(&self, (service, n): Instance, addr: &str) -> anyhow::Result<Child> {
        let name = match n {
            0 => format!("{}.log", service.as_str()),
            n => format!("{}-{}.log", service.as_str(), n + 1),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(name))?;
        Command::new(&self.exe)
            .arg("serve")
            .arg(service.as_str())
            .args(["--stand", &self.stand])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(service.addr_variable(), addr)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", service.as_str()))
    }

    /// SIGKILL of one instance of `service` (picked at random), then a new process at
    /// once; returns which instance.
    pub fn kill_and_restart(&self, service: ServiceName) -> anyhow::Result<usize> {
        let mut members = self.lock();
        let running: Vec<usize> = members
            .iter()
            .filter(|((s, _), m)| *s == service && m.supervised)
            .map(|((_, n), _)| *n)
            .collect();
        anyhow::ensure!(
            !running.is_empty(),
            "no instance of {} runs",
            service.as_str()
        );
        let pick = usize::try_from(crate::load::random_below(running.len() as u64)).unwrap_or(0);
        let instance = (service, running[pick]);
        let member = members.get_mut(&instance).context("a started service")?;
        let _ = member.child.kill();
        let _ = member.child.wait();
        member.tally.kills += 1;
        member.child = self.spawn(instance, &member.addr)?;
        Ok(instance.1)
    }

    /// SIGKILL of one instance, which stays down.
    pub fn kill_for_good(&self, instance: Instance) -> anyhow::Result<()> {
        let mut members = self.lock();
        let member = members.get_mut(&instance).context("a started service")?;
        let _ = member.child.kill();
        let _ = member.child.wait();
        member.tally.kills += 1;
        member.supervised = false;
        Ok(())
    }

    /// Starts again every instance that stopped by itself; returns which, with how.
    pub fn revive_exited(&self) -> anyhow::Result<Vec<(Instance, ExitStatus)>> {
        let mut revived = Vec::new();
        let mut members = self.lock();
        for (&instance, member) in members.iter_mut().filter(|(_, m)| m.supervised) {
            if let Some(status) = member.child.try_wait()? {
                member.tally.own_exits += 1;
                member.child = self.spawn(instance, &member.addr)?;
                revived.push((instance, status));
            }
        }
        Ok(revived)
    }

    /// The process id of each running instance now.
    pub fn pids(&self) -> BTreeMap<Instance, u32> {
        self.lock()
            .iter()
            .filter(|(_, m)| m.supervised)
            .map(|(&i, m)| (i, m.child.id()))
            .collect()
    }

    /// What each service went through, over all its instances.
    pub fn tallies(&self) -> BTreeMap<ServiceName, Tally> {
        let mut tallies: BTreeMap<ServiceName, Tally> = BTreeMap::new();
        for (&(service, _), member) in self.lock().iter() {
            let tally = tallies.entry(service).or_default();
            tally.kills += member.tally.kills;
            tally.own_exits += member.tally.own_exits;
        }
        tallies
    }
}

/// How an instance is named in the suite's output: `command-api`, or `command-api#2`.
pub fn label((service, n): Instance) -> String {
    match n {
        0 => service.as_str().to_owned(),
        n => format!("{}#{}", service.as_str(), n + 1),
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for member in self.lock().values_mut() {
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }
}
