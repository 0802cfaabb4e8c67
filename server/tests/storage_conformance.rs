//! openraft's storage conformance suite against the RocksDB log store and
//! shard state machine, each build on a fresh database.

use std::sync::Arc;

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use ringkv_server::config::StorageConfig;
use ringkv_server::raft::types::StorageError;
use ringkv_server::raft::types::TypeConfig;
use ringkv_server::ring::TokenRange;
use ringkv_server::storage::group_commit::GroupCommit;
use ringkv_server::storage::log_store::LogStore;
use ringkv_server::storage::state_machine::ShardStateMachine;
use ringkv_server::storage::state_machine::SmStats;
use ringkv_server::storage::Db;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), &StorageConfig::default()).expect("open db");
        let gc = GroupCommit::start(db.clone(), 64).expect("group commit");
        let shard = 7;
        let log = LogStore::new(shard, db.clone(), gc);
        let whole_ring = vec![TokenRange { start: 0, end: None }];
        let sm = ShardStateMachine::open(
            shard,
            db,
            whole_ring,
            60_000,
            Arc::new(SmStats::default()),
            Arc::default(),
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage conformance suite");
}
