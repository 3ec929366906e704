//! Child processes that die with the test process: each is started with `PR_SET_PDEATHSIG`
//! (SIGKILL) from one spawner thread that lives as long as the process, so a registry or node
//! agent never outlives the tests, even when a static owner is never dropped or the test binary
//! is killed.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` so that it is killed when this process ends.
pub fn spawn_owned(mut command: Command) -> io::Result<Child> {
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(io::Error::from)
        });
    }
    // The death signal fires when the spawning thread exits, so spawn from a thread that never does.
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // All senders gone means the process is exiting; park so children stay tied to
                // a live thread until then.
                loop {
                    std::thread::park();
                }
            })
            .expect("starting the child spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, reply))
        .map_err(|_| io::Error::other("the child spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the child spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_spawned_and_can_be_waited_for() {
        let mut child = spawn_owned(Command::new("true")).expect("spawning true");
        assert!(child.wait().expect("waiting").success());
    }
}
