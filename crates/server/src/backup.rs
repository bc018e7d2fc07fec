//! Backups: a user's whole history out as NDJSON, and back in, all or nothing.
//! An export holds every log the user may read (their own, then each shared
//! space's, every line of a space naming it); an import writes each line
//! into its space, and is refused, naming the line, if it names a space the
//! user may not write.
//!
//! Export streams batches straight from the store (one snapshot, bounded
//! channel), so memory stays flat however long the history is.
//!
//! Import runs in two phases. First every line is parsed, carried forward to
//! the current schema and validated, and spooled to a temporary file; nothing
//! touches the database yet, so a bad line anywhere refuses the whole backup
//! and a slow upload holds no lock. Then the spool is written in one
//! transaction, skipping event ids the user already has.
//!
//! The HTTP handlers (`routes/backup.rs`) and the operator commands
//! (`mana-sync export`, `mana-sync import`) both use these functions.

use std::io;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use mana_sync_protocol::backup::{BackupLine, LineError, parse_line};
use mana_sync_protocol::{SpaceId, UserId};
use mana_sync_store::{ImportError, SourceError, Store, StoreError, StoredChange};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// Longest backup line accepted (a change can be at most a push body).
pub const MAX_LINE_BYTES: usize = crate::MAX_BODY_BYTES;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Changes stored.
    pub imported: u64,
    /// Changes skipped: the user already had their `eventId`.
    pub skipped: u64,
}

/// Why a backup was refused or failed. Nothing was imported in any case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A line is invalid.
    #[error(transparent)]
    Line(#[from] LineError),
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line}: longer than {max} bytes; nothing was imported")]
    LineTooLong {
        /// The line number.
        line: u64,
        /// The limit.
        max: usize,
    },
    /// A line is not UTF-8.
    #[error("line {line}: not UTF-8 text; nothing was imported")]
    NotUtf8 {
        /// The line number.
        line: u64,
    },
    /// The backup is larger than allowed.
    #[error("the backup is larger than {limit} bytes; nothing was imported")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The backup could not be read to its end.
    #[error("reading the backup failed: {0}; nothing was imported")]
    Read(String),
    /// A line names a shared space the importer may not write (not a
    /// member, or a viewer).
    #[error("line {line}: you cannot write to space `{space}`; nothing was imported")]
    SpaceForbidden {
        /// The first line naming the space.
        line: u64,
        /// The space.
        space: SpaceId,
    },
    /// The upload stopped arriving for longer than `BODY_TIMEOUT_SECS`.
    #[error("the backup stopped arriving; nothing was imported, send it again")]
    TimedOut,
    /// The local spool file failed (a server problem).
    #[error("spooling the backup failed: {0}")]
    Spool(io::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Marks a body that went over its size limit, so that the line reader's
/// I/O error can be told apart from other read failures.
#[derive(Debug, thiserror::Error)]
#[error("the body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// Marks a body that stopped arriving (`BODY_TIMEOUT_SECS`), likewise.
#[derive(Debug, thiserror::Error)]
#[error("the body stopped arriving")]
pub struct BodyTimedOut;

fn line_of<'a>(change: &'a StoredChange, created_at: &'a str) -> BackupLine<'a> {
    BackupLine {
        event_id: change.event_id,
        schema_version: change.schema_version,
        app_id: &change.app_id,
        table: &change.table,
        id: &change.record_id,
        op: change.op,
        data: change.data.as_deref(),
        fields: change.fields.as_ref(),
        deleted_at: change.deleted_at.as_ref(),
        actor: change.actor.as_deref(),
        client_id: &change.client_id,
        created_at,
        space_id: change.space_id.as_ref().map(|space| space.as_str()),
    }
}

fn ndjson(batch: &[StoredChange]) -> Bytes {
    let mut out = Vec::with_capacity(batch.len() * 256);
    for change in batch {
        let created_at = change.created_at.format(&Rfc3339).unwrap_or_default();
        // Serialising strings, numbers and raw JSON into a Vec cannot fail.
        if serde_json::to_writer(&mut out, &line_of(change, &created_at)).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// Every change of `user`, oldest first, as NDJSON chunks. Fails before the
/// first chunk when the export cannot start.
pub async fn export(
    store: &dyn Store,
    user: &UserId,
) -> Result<impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static, StoreError> {
    let batches = store.export(user).await?;
    Ok(batches.map_ok(|batch| ndjson(&batch)))
}

fn read_error(error: LinesCodecError, line: u64) -> BackupError {
    match error {
        LinesCodecError::MaxLineLengthExceeded => BackupError::LineTooLong {
            line,
            max: MAX_LINE_BYTES,
        },
        LinesCodecError::Io(error) => {
            if let Some(too_large) = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<BodyTooLarge>())
            {
                BackupError::TooLarge {
                    limit: too_large.limit,
                }
            } else if error.get_ref().is_some_and(|e| e.is::<BodyTimedOut>()) {
                BackupError::TimedOut
            } else if error.kind() == io::ErrorKind::InvalidData {
                BackupError::NotUtf8 { line }
            } else {
                BackupError::Read(error.to_string())
            }
        }
    }
}

/// Restores the NDJSON backup read from `reader` for `user`: validates every
/// line first, then stores all of them in one transaction, or nothing.
pub async fn import<R: AsyncRead + Unpin + Send>(
    store: &dyn Store,
    user: &UserId,
    reader: R,
) -> Result<ImportReport, BackupError> {
    // Phase 1: validate and spool.
    let spool = tempfile::tempfile().map_err(BackupError::Spool)?;
    let mut writer = BufWriter::new(tokio::fs::File::from_std(spool));
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
    let mut number = 0_u64;
    // Each space the backup names, with the first line naming it.
    let mut named: Vec<(SpaceId, u64)> = Vec::new();
    while let Some(line) = lines.next().await {
        number += 1;
        let line = line.map_err(|e| read_error(e, number))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(number, &line)?;
        if let Some(space) = parsed.change.space_id
            && !named.iter().any(|(known, _)| *known == space)
        {
            named.push((space, number));
        }
        writer
            .write_all(line.as_bytes())
            .await
            .map_err(BackupError::Spool)?;
        writer.write_all(b"\n").await.map_err(BackupError::Spool)?;
    }
    writer.flush().await.map_err(BackupError::Spool)?;
    // Only into spaces the user may write (the store checks again in its
    // transaction, and on Postgres row-level security does too).
    if !named.is_empty() {
        let memberships = store.spaces_of(user).await?;
        for (space, line) in named {
            let writable = memberships
                .iter()
                .any(|m| m.space_id == space && m.role.can_write());
            if !writable {
                return Err(BackupError::SpaceForbidden { line, space });
            }
        }
    }
    let mut spool = writer.into_inner();
    tokio::io::AsyncSeekExt::rewind(&mut spool)
        .await
        .map_err(BackupError::Spool)?;

    // Phase 2: one transaction, fed from the spool at disk speed.
    let mut number = 0_u64;
    let changes =
        FramedRead::new(spool, LinesCodec::new_with_max_length(MAX_LINE_BYTES)).map(move |line| {
            number += 1;
            let line = line.map_err(|e| -> SourceError { Box::new(read_error(e, number)) })?;
            parse_line(number, &line).map_err(|e| -> SourceError { Box::new(e) })
        });
    match store.import(user, Box::pin(changes)).await {
        Ok(outcome) => Ok(ImportReport {
            imported: outcome.imported,
            skipped: outcome.skipped,
        }),
        Err(ImportError::Store(error)) => Err(BackupError::Store(error)),
        // The spool was validated in phase 1; failing to read it back is ours.
        Err(ImportError::Source(error)) => {
            Err(BackupError::Spool(io::Error::other(error.to_string())))
        }
    }
}
