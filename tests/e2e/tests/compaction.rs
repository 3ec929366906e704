//! 410 Gone after compaction. In a binary of its own: compacting the stand-in's history would
//! also expire the watches of tests running beside it.

use e2e::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_gets_410_gone() -> anyhow::Result<()> {
    let cluster = Cluster::new("gone").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let created = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": "c"}}))?,
        )
        .await?;
    let old = match cluster.standin() {
        Some(standin) => {
            cms.patch(
                "c",
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"k": "2"}})),
            )
            .await?;
            standin.compact();
            created.metadata.resource_version.unwrap_or_default()
        }
        // A real cluster compacts every few minutes; version 1 is always gone.
        None => "1".to_string(),
    };
    let mut stream = cms
        .watch(&WatchParams::default().timeout(30), &old)
        .await?
        .boxed();
    let event = tokio::time::timeout(e2e::DEADLINE, stream.next())
        .await?
        .expect("an event");
    match event {
        Ok(WatchEvent::Error(e)) => assert_eq!(e.code, 410, "{e:?}"),
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    Ok(())
}
