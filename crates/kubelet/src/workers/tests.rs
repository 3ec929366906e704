//! A worker served in the test's process, and agents (pools) that come and go around it.

use super::{Launcher, PoolOptions, WorkerOptions, WorkerPool, serve};
use crate::logs::{LogFiles, LogPolicy};
use crate::runtime::{
    ContainerRun, Exit, Limits, ModuleBytes, Network, PrepareError, Reattach, RunningContainer,
    Runtime, StartError, Usage, Warnings,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Guests that print their first argument, wait their second (milliseconds), then exit with
/// their third.
struct ScriptRuntime;

impl Runtime for ScriptRuntime {
    type Prepared = ();

    fn arch(&self) -> &str {
        "wasm32-script"
    }

    fn version(&self) -> String {
        "script://1".into()
    }

    async fn prepare(&self, module: ModuleBytes) -> Result<(), PrepareError> {
        match &*module.bytes {
            b"\0asm" => Ok(()),
            _ => Err(PrepareError::not_runnable("not WebAssembly")),
        }
    }

    async fn start(&self, _: &(), run: ContainerRun) -> Result<RunningContainer, StartError> {
        let mut stdout = run.stdout;
        let args = run.args;
        Ok(RunningContainer::new(tokio::spawn(async move {
            let _ = stdout.write_all(format!("{}\n", args[0]).as_bytes()).await;
            let _ = stdout.flush().await;
            tokio::time::sleep(Duration::from_millis(args[1].parse().unwrap_or(0))).await;
            Exit {
                code: args[2].parse().unwrap_or(0),
                reason: None,
                message: None,
            }
        })))
    }
}

struct Node {
    dir: tempfile::TempDir,
    logs: LogFiles,
}

impl Node {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            logs: LogFiles::new(LogPolicy::default()),
        }
    }

    /// Serves worker 0 in this process, as the agent would have started it.
    async fn serve_worker(&self) -> tokio::task::JoinHandle<()> {
        let socket = self.dir.path().join("workers/0.sock");
        let options = WorkerOptions {
            socket: socket.clone(),
            logs: LogPolicy::default(),
            max_module_bytes: 1 << 20,
        };
        let worker = tokio::spawn(async move {
            serve(ScriptRuntime, options)
                .await
                .expect("the worker serves");
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker serves its socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worker
    }

    /// An agent's pool of the one worker (which must be served: it cannot be started).
    async fn agent(&self) -> WorkerPool {
        WorkerPool::start(PoolOptions {
            workers: 1,
            dir: self.dir.path().join("workers"),
            launcher: Launcher {
                program: "/nonexistent/krustlet".into(),
                args: Vec::new(),
            },
            max_module_bytes: 1 << 20,
        })
        .await
        .expect("the pool connects to the worker")
    }

    fn run(&self, id: &str, args: [&str; 3]) -> ContainerRun {
        let log = self
            .logs
            .create(&self.dir.path().join(format!("{id}.log")))
            .expect("a log file");
        ContainerRun {
            id: id.into(),
            started_at: jiff::Timestamp::now(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            mounts: Vec::new(),
            state_dir: self.dir.path().join("state").join(id),
            stdout: log.writer("stdout"),
            stderr: log.writer("stderr"),
            limits: Limits::default(),
            network: Network {
                netns: None,
                listen_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                ports: Vec::new(),
                allowed_outbound: Vec::new(),
                dns: Default::default(),
            },
            usage: Arc::new(Usage::default()),
            warnings: Warnings::discarded(),
            stop: CancellationToken::new(),
        }
    }

    fn reattach(&self, id: &str) -> Reattach {
        Reattach {
            id: id.into(),
            log: self
                .logs
                .create(&self.dir.path().join(format!("{id}.log")))
                .expect("a log file"),
            usage: Arc::new(Usage::default()),
            warnings: Warnings::discarded(),
            stop: CancellationToken::new(),
        }
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{id}.log"))).unwrap_or_default()
    }
}

fn module() -> ModuleBytes {
    ModuleBytes {
        digest: "sha256:00".into(),
        bytes: Arc::from(&b"\0asm"[..]),
    }
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} within 10s"))
}

#[tokio::test]
async fn a_container_in_a_worker_writes_its_log_and_reports_its_exit() {
    let node = Node::new();
    let _worker = node.serve_worker().await;
    let agent = node.agent().await;
    assert_eq!(agent.arch(), "wasm32-script");
    let refused = agent
        .prepare(ModuleBytes {
            digest: "sha256:11".into(),
            bytes: Arc::from(&b"text"[..]),
        })
        .await
        .expect_err("not a module");
    assert_eq!(refused.message, "not WebAssembly");
    let prepared = agent.prepare(module()).await.expect("prepared");
    let mut running = agent
        .start(&prepared, node.run("one", ["hello", "0", "3"]))
        .await
        .expect("started");
    let exit = within("the exit", running.wait()).await;
    assert_eq!(exit.code, 3);
    assert!(
        node.log("one").contains("stdout F hello"),
        "{}",
        node.log("one")
    );
}

#[tokio::test]
async fn a_new_agent_takes_over_running_and_exited_containers() {
    let node = Node::new();
    let _worker = node.serve_worker().await;
    let first = node.agent().await;
    let prepared = first.prepare(module()).await.expect("prepared");
    let long = first
        .start(&prepared, node.run("long", ["long", "1000", "5"]))
        .await
        .expect("started");
    let short = first
        .start(&prepared, node.run("short", ["short", "200", "7"]))
        .await
        .expect("started");
    // The agent goes away without stopping its guests.
    assert!(first.detach());
    drop((long, short));
    drop(first);
    let second = node.agent().await;
    // The one that exited while no agent listened is reported with its exit code; the one
    // still running is followed to its exit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut short = loop {
        if let Some(short) = second.reattach(node.reattach("short")) {
            assert!(
                short.started_at.is_some(),
                "the worker knows when it started"
            );
            break short.running;
        }
        assert!(tokio::time::Instant::now() < deadline, "short is held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(within("short's exit", short.wait()).await.code, 7);
    let mut long = second
        .reattach(node.reattach("long"))
        .expect("long is held")
        .running;
    assert_eq!(within("long's exit", long.wait()).await.code, 5);
    assert!(second.reattach(node.reattach("unknown")).is_none());
}

#[tokio::test]
async fn stopping_a_followed_container_stops_it_in_the_worker() {
    let node = Node::new();
    let _worker = node.serve_worker().await;
    let agent = node.agent().await;
    let prepared = agent.prepare(module()).await.expect("prepared");
    let running = agent
        .start(&prepared, node.run("stopped", ["x", "60000", "0"]))
        .await
        .expect("started");
    running.stop();
    drop(running);
    // A round trip after the stop: the worker has handled it once this is answered.
    agent
        .prepare(ModuleBytes {
            digest: "sha256:22".into(),
            bytes: Arc::from(&b"\0asm"[..]),
        })
        .await
        .expect("prepared");
    drop(agent);
    // A new agent finds nothing of it: the worker stopped and forgot it.
    let next = node.agent().await;
    assert!(next.reattach(node.reattach("stopped")).is_none());
}

#[tokio::test]
async fn a_stray_connection_neither_displaces_the_agent_nor_drains_its_guests() {
    use futures::{SinkExt, StreamExt};
    let node = Node::new();
    let _worker = node.serve_worker().await;
    let agent = node.agent().await;
    let prepared = agent.prepare(module()).await.expect("prepared");
    let mut running = agent
        .start(&prepared, node.run("kept", ["kept", "1500", "4"]))
        .await
        .expect("started");
    let socket = node.dir.path().join("workers/0.sock");
    // Greeting without the key, or asking to drain without greeting: refused, closed.
    for request in [
        serde_json::json!({"id": 7, "op": "hello", "protocol": super::protocol::PROTOCOL_VERSION}),
        serde_json::json!({"id": 7, "op": "hello", "protocol": super::protocol::PROTOCOL_VERSION, "key": "00".repeat(32)}),
        serde_json::json!({"id": 7, "op": "drain", "grace_seconds": 0}),
    ] {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connected");
        let mut stray = tokio_util::codec::Framed::new(stream, super::protocol::codec(1 << 20));
        stray
            .send(bytes::Bytes::from(serde_json::to_vec(&request).unwrap()))
            .await
            .expect("sent");
        let answer = within("the refusal", stray.next()).await;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.expect("an answer").expect("readable")).unwrap();
        assert!(answer.to_string().contains("the agent's key"), "{answer}");
        assert!(
            within("the close", stray.next()).await.is_none(),
            "still open"
        );
    }
    // The agent's link still works, and its guest ran on undisturbed.
    agent
        .prepare(ModuleBytes {
            digest: "sha256:33".into(),
            bytes: Arc::from(&b"\0asm"[..]),
        })
        .await
        .expect("the agent is still connected");
    assert_eq!(within("the exit", running.wait()).await.code, 4);
}

/// The worker's end of a connection to the agent.
type WorkerEnd =
    tokio_util::codec::Framed<tokio::net::UnixStream, tokio_util::codec::LengthDelimitedCodec>;

/// A worker scripted by the test, answering on worker 0's socket, and the agent (a pool)
/// starting against it.
struct ScriptedWorker {
    framed:
        tokio_util::codec::Framed<tokio::net::UnixStream, tokio_util::codec::LengthDelimitedCodec>,
    /// The agent's greeting, not answered yet.
    hello: super::protocol::Envelope,
    pool: tokio::task::JoinHandle<Result<WorkerPool, super::WorkerError>>,
}

impl ScriptedWorker {
    /// Listens on `node`'s worker 0 socket, starts a pool there and reads its greeting.
    async fn greeted(node: &Node) -> Self {
        std::fs::create_dir_all(node.dir.path().join("workers")).expect("the workers dir");
        let listener = tokio::net::UnixListener::bind(node.dir.path().join("workers/0.sock"))
            .expect("a socket");
        let node_dir = node.dir.path().to_path_buf();
        let pool = tokio::spawn(async move {
            WorkerPool::start(PoolOptions {
                workers: 1,
                dir: node_dir.join("workers"),
                launcher: Launcher {
                    program: "/nonexistent/krustlet".into(),
                    args: Vec::new(),
                },
                max_module_bytes: 1 << 20,
            })
            .await
        });
        let (stream, _) = within("the agent connects", listener.accept())
            .await
            .expect("accepted");
        let mut framed = tokio_util::codec::Framed::new(stream, super::protocol::codec(1 << 20));
        let hello = Self::read(&mut framed).await;
        Self {
            framed,
            hello,
            pool,
        }
    }

    /// The agent's next request.
    async fn read(framed: &mut WorkerEnd) -> super::protocol::Envelope {
        use futures::StreamExt;
        serde_json::from_slice(
            &within("a request", framed.next())
                .await
                .expect("a frame")
                .expect("readable"),
        )
        .expect("an envelope")
    }

    /// Sends `message` (a reply or notice, as JSON) to the agent.
    async fn send(&mut self, message: &serde_json::Value) {
        use futures::SinkExt;
        self.framed
            .send(bytes::Bytes::from(
                serde_json::to_vec(message).expect("json"),
            ))
            .await
            .expect("sent");
    }
}

#[tokio::test]
async fn a_worker_of_another_protocol_is_asked_to_drain() {
    use super::protocol::{FromWorker, Reply, Request};
    let node = Node::new();
    // An older worker: it refuses the agent's protocol.
    let mut worker = ScriptedWorker::greeted(&node).await;
    assert!(matches!(
        worker.hello.request,
        Request::Hello { protocol: 1, .. }
    ));
    let refusal = FromWorker::Reply {
        id: worker.hello.id,
        reply: Reply::Refused {
            message: "this worker speaks protocol 0".into(),
        },
    };
    worker
        .send(&serde_json::to_value(&refusal).expect("json"))
        .await;
    let drain = ScriptedWorker::read(&mut worker.framed).await;
    assert!(matches!(drain.request, Request::Drain { .. }), "{drain:?}");
    worker.pool.abort();
}

#[tokio::test]
async fn a_pod_network_is_not_given_to_a_worker_that_cannot_enter_it() {
    use super::protocol::{self, FromWorker, Hello, Reply};
    let node = Node::new();
    // A worker of a build before features were told: its greeting has no `features`.
    let mut worker = ScriptedWorker::greeted(&node).await;
    let greeting = FromWorker::Reply {
        id: worker.hello.id,
        reply: Reply::Hello(Box::new(Hello {
            protocol: protocol::PROTOCOL_VERSION,
            pid: 1,
            arch: "script".into(),
            version: "old".into(),
            capacity: None,
            features: Vec::new(),
            containers: Vec::new(),
        })),
    };
    let mut old = serde_json::to_value(&greeting).expect("json");
    let removed = remove_key(&mut old, "features");
    assert!(removed, "the greeting carried features: {old}");
    worker.send(&old).await;
    let pool = within("the pool starts", worker.pool)
        .await
        .expect("joined")
        .expect("a pool");
    let mut run = node.run("in-a-pod-network", ["hello", "0", "0"]);
    run.network.netns = Some("/nonexistent/netns".into());
    let Err(refused) = within("the start", pool.start(&module(), run)).await else {
        panic!("a pod network was given to a worker that cannot enter it");
    };
    assert!(refused.to_string().contains("older build"), "{refused}");
}

/// Removes `key` wherever it is in `value`; whether it was there.
fn remove_key(value: &mut serde_json::Value, key: &str) -> bool {
    let mut found = false;
    match value {
        serde_json::Value::Object(map) => {
            found = map.remove(key).is_some();
            for v in map.values_mut() {
                found |= remove_key(v, key);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                found |= remove_key(v, key);
            }
        }
        _ => {}
    }
    found
}
