//! openraft's own storage conformance suite, run against a group's RocksDB log store and state machine.
//! A peer's test suite is worth more than our own: it checks the contract of `storage/v2.rs` case by case.

#![allow(clippy::unwrap_used)]

use fjord_log::StoreOptions;
use fjord_log::sealed::SealPolicy;
use fjord_raft::GroupLogStore;
use fjord_raft::GroupStateMachine;
use fjord_raft::NodeIdentity;
use fjord_raft::NodeStorage;
use fjord_raft::TypeConfig;
use openraft::StorageError;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, GroupLogStore, GroupStateMachine), StorageError<u64>> {
        let dir = TempDir::new().unwrap();
        let options = StoreOptions { partitions: 2, ..StoreOptions::default() };
        let storage = NodeStorage::open(
            dir.path(),
            &options,
            &NodeIdentity { node_id: 1, region: "test".to_owned() },
            SealPolicy::default(),
        )
        .unwrap();
        // The suite's memberships carry no cluster id (its nodes are defaults); a node of a real region has
        // learned one before it builds a snapshot.
        storage.segments().adopt_cluster_id(uuid::Uuid::from_u128(7)).unwrap();
        // Group 1, not 0: keys are prefixed by group, and a store must not see its neighbours' data.
        let (log_store, state_machine) = storage.group(1)?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn openraft_storage_conformance() {
    Suite::test_all(Builder).unwrap();
}
