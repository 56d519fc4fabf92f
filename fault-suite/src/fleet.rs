//! The three services as child processes of the suite, each started as `fault-suite serve
//! <service>` (the very code path of the service's own binary), killed with SIGKILL when
//! the schedule says so and started again at once, as a supervisor would. A service that
//! stops on its own (it gives up on a dependency that stayed down) is started again too,
//! and counted.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use anyhow::Context;
use clap::ValueEnum;

/// A service of the shop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ServiceName {
    CommandApi,
    Projections,
    SagaOrchestrator,
}

impl ServiceName {
    pub const ALL: [Self; 3] = [Self::CommandApi, Self::Projections, Self::SagaOrchestrator];

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

#[derive(Debug)]
struct Member {
    child: Child,
    tally: Tally,
}

/// The running services.
#[derive(Debug)]
pub struct Fleet {
    exe: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
    members: Mutex<BTreeMap<ServiceName, Member>>,
}

impl Fleet {
    /// Starts every service with `env`, each logging to `<logs>/<service>.log`.
    pub fn start(env: Vec<(String, String)>, logs: PathBuf) -> anyhow::Result<Self> {
        let fleet = Self {
            exe: std::env::current_exe().context("the suite's own executable")?,
            env,
            logs,
            members: Mutex::default(),
        };
        for service in ServiceName::ALL {
            let child = fleet.spawn(service)?;
            fleet.lock().insert(
                service,
                Member {
                    child,
                    tally: Tally::default(),
                },
            );
        }
        Ok(fleet)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceName, Member>> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(&self, service: ServiceName) -> anyhow::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", service.as_str())))?;
        Command::new(&self.exe)
            .arg("serve")
            .arg(service.as_str())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", service.as_str()))
    }

    /// SIGKILL, then a new process at once.
    pub fn kill_and_restart(&self, service: ServiceName) -> anyhow::Result<()> {
        let mut members = self.lock();
        let member = members.get_mut(&service).context("a started service")?;
        let _ = member.child.kill();
        let _ = member.child.wait();
        member.tally.kills += 1;
        member.child = self.spawn(service)?;
        Ok(())
    }

    /// Starts again every service that stopped by itself; returns which, with how.
    pub fn revive_exited(&self) -> anyhow::Result<Vec<(ServiceName, ExitStatus)>> {
        let mut revived = Vec::new();
        let mut members = self.lock();
        for (&service, member) in members.iter_mut() {
            if let Some(status) = member.child.try_wait()? {
                member.tally.own_exits += 1;
                member.child = self.spawn(service)?;
                revived.push((service, status));
            }
        }
        Ok(revived)
    }

    /// The process id of each service now.
    pub fn pids(&self) -> BTreeMap<ServiceName, u32> {
        self.lock()
            .iter()
            .map(|(&s, m)| (s, m.child.id()))
            .collect()
    }

    pub fn tallies(&self) -> BTreeMap<ServiceName, Tally> {
        self.lock().iter().map(|(&s, m)| (s, m.tally)).collect()
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
