//! [`DamageReports`]: damage a running node finds in what it stores (a record, a block or a segment that fails
//! its checksum on a read). Checksums keep corrupt bytes from being served; this keeps the damage from being
//! forgotten. A report is written at once to a marker file in the data dir, `damage-found` (fsynced): the
//! next open finds it and treats the database as damaged — moved aside, the node's groups repaired from
//! their leaders before they vote again (see [`crate::storage`]). The report is also published, so the
//! process running the node can restart it into that repair without waiting for an operator.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use tokio::sync::watch;

/// The marker file's name in the data dir.
pub const MARKER_FILE: &str = "damage-found";

/// Where a running node reports damage, and where its runner learns of it.
pub struct DamageReports {
    marker: PathBuf,
    found: watch::Sender<Option<String>>,
    /// Partitions already reported in this run: each is reported once (the sealer retries every commit).
    reported: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

impl DamageReports {
    /// Reports for the node whose data dir is `data_dir`.
    pub(crate) fn new(data_dir: &Path) -> Self {
        DamageReports {
            marker: data_dir.join(MARKER_FILE),
            found: watch::Sender::new(None),
            reported: Default::default(),
        }
    }

    /// Records that `partition`'s stored data was found damaged (`detail` says what and where): logged,
    /// appended to the marker file and fsynced, so the next open repairs the node whatever happens first,
    /// and published to [`DamageReports::found`]; once per partition and run. Blocking (a small write and
    /// an fsync).
    pub fn report(&self, partition: u32, detail: &str) {
        if !self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(partition) {
            return;
        }
        tracing::error!(
            partition,
            %detail,
            marker = %self.marker.display(),
            "stored data is damaged: marked for repair; the node's database will be moved aside and repaired \
             from its peers when it restarts"
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.marker)
            .and_then(|mut file| {
                writeln!(file, "partition {partition}: {detail}")?;
                file.sync_all()
            })
            .and_then(|()| self.marker.parent().map_or(Ok(()), |dir| std::fs::File::open(dir)?.sync_all()));
        if let Err(error) = written {
            tracing::error!(%error, marker = %self.marker.display(), "could not record the damage for the next start");
        }
        self.found.send_replace(Some(format!("partition {partition}: {detail}")));
    }

    /// The first damage reported while the node runs (`None` until there is some).
    pub fn found(&self) -> watch::Receiver<Option<String>> {
        self.found.subscribe()
    }
}

/// What the marker file in `data_dir` says, if there is one: damage a previous run found and did not repair.
pub(crate) fn reported_before(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(MARKER_FILE)).ok()?;
    Some(format!("a previous run found stored data damaged: {}", text.trim_end().replace('\n', "; ")))
}
