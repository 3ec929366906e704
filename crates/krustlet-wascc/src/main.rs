//! `krustlet-wascc`: a Kubernetes node that runs waSCC actors.

use clap::Parser;

/// A Kubernetes node that runs waSCC actors (waPC modules with signed wascap claims) with
/// wasmtime, and the capability providers they call: wascc:http_server, wascc:logging,
/// wascc:keyvalue and wascc:blobstore.
///
/// With a kubeconfig it joins the cluster as a node tainted `krustlet/arch=wasm32-wascc:NoExecute`;
/// with `--standalone` it runs the pods in `--pod-manifest-path` with no cluster at all.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    node: node_cli::NodeArgs,
    #[command(subcommand)]
    command: Option<node_cli::Command>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cli, notes): (Cli, _) = node_cli::parse_args()?;
    node_cli::init(&cli.node);
    notes.log();
    node_cli::run(cli.node, cli.command, |config| {
        Ok(wascc_runtime::WasccRuntime::new(
            config.data_dir.join("compiled"),
            config.http_serving,
            config.descriptors,
        )?)
    })
    .await
}
