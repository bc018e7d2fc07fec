//! What a failed statement means for the caller: a fault, or the database
//! unavailable for now; and its description, with the database's own code.
use crate::StoreError;

/// Whether a failed statement is worth retrying later rather than a fault:
/// the connection or the server went away, or the database asked us to retry.
fn is_transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available
}

/// The database's own code and message (`42501: permission denied for …`),
/// or the driver's error with its causes: on its own a driver error says
/// only "db error" or "error communicating with the server".
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

pub(crate) fn database_error(error: tokio_postgres::Error) -> StoreError {
    if error.is_closed() {
        return StoreError::Unavailable(describe(&error));
    }
    match error.as_db_error() {
        Some(db) if is_transient(db.code().code()) => StoreError::Unavailable(describe(&error)),
        Some(_) => StoreError::Database(describe(&error)),
        None => StoreError::Unavailable(describe(&error)),
    }
}

/// Failing to get a connection (including failing to open one) means the
/// database is unavailable, whatever the reason it gave.
pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => StoreError::Unavailable(describe(&error)),
        other => StoreError::Unavailable(other.to_string()),
    }
}
