//! `krustlet-wasi`: a Kubernetes node that runs WASI WebAssembly pods.

use clap::Parser;

/// A Kubernetes node that runs WebAssembly (WASI) pods with wasmtime.
///
/// With a kubeconfig it joins the cluster as a node tainted `krustlet/arch=wasm32-wasi:NoExecute`;
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
        Ok(wasi_runtime::WasiRuntime::new(
            config.data_dir.join("compiled"),
            wasi_runtime::Bounds {
                pool_instances: config.http_pool_instances,
                guaranteed_requests: config.http_guaranteed_requests_per_container,
                requests_per_container: config.max_http_requests_per_container,
                outgoing_connections_per_container: config
                    .max_outgoing_http_connections_per_container,
                handles_per_instance: config.max_guest_handles,
                lookups_per_container: config.max_name_lookups_per_container,
                keep_resident: config.http_instance_keep_resident,
                serving: config.http_serving,
                descriptors: config.descriptors,
                key_value_store_size: config.max_key_value_store_size,
                request_deadlines: wasi_runtime::RequestDeadlines {
                    timeout: config.http_request_timeout,
                    return_grace: config.http_return_grace,
                    cpu_time: config.http_request_cpu_time,
                },
            },
        )?)
    })
    .await
}
