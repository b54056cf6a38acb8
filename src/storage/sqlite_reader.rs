//! Publish lookups on a SQLite file, read by a thread of its own through a read-only connection
//! of its own.
//!
//! With a million devices nearly every publish misses the cache and reads one row by its node
//! hash. Through sea-orm and sqlx that read cost ~20 µs of CPU: SQLite's own work, plus building
//! the statement, a hop to the connection's thread and back, a row copied value by value and
//! decoded column by name, and a read transaction per statement (a lock on the WAL index each).
//! SQLite alone does it in 10–12 µs when one read transaction covers a batch
//! (docs/performance.md, "Performance, round two"). So here one thread owns one connection and
//! one prepared statement, takes whatever misses have queued (as `lookup.rs` does for the pool),
//! and reads them in one read transaction. A miss queued while a batch is read waits for the
//! next one, so every lookup sees everything committed before it was asked: a device that has
//! just registered, on any instance, is found.
//!
//! PostgreSQL and in-memory SQLite keep `lookup.rs`: the first has its own server, the second
//! cannot be opened twice.

use chrono::{DateTime, NaiveDateTime, Utc};
use libsqlite3_sys as ffi;
use sea_orm::DbErr;
use std::ffi::{CStr, CString, c_int};
use std::path::Path;
use std::ptr::{NonNull, null, null_mut};
use tokio::sync::mpsc;

use super::connect::{BUSY_TIMEOUT, CACHE_SIZE};
use super::entity::Model;
use super::lookup::{MAX_BATCH, Miss};

/// The columns of [`Model`], in its order: `Statement::row` reads them by position.
const SELECT: &CStr = c"SELECT id, dialect, provider, account, domain, device_key, device_id, \
    muc, token, second_token, webpush_p256dh, webpush_auth, node, node_hash, secret, \
    created_at, updated_at, last_success_at, last_error_at, last_error \
    FROM registrations WHERE node_hash = ?1";

/// Opens the connection and starts the thread; the thread ends when `queue`'s senders are
/// dropped (the store is).
pub(super) fn start(file: &Path, queue: mpsc::Receiver<Miss>) -> Result<(), DbErr> {
    let name = file
        .to_str()
        .and_then(|s| CString::new(s).ok())
        .ok_or_else(|| DbErr::Custom(format!("unusable SQLite path {}", file.display())))?;
    let conn = Connection::open_read_only(&name)?;
    let reader = Reader {
        stmt: conn.prepare(SELECT)?,
        begin: conn.prepare(c"BEGIN")?,
        commit: conn.prepare(c"COMMIT")?,
        conn,
    };
    std::thread::Builder::new()
        .name("pushgate-lookup".into())
        .spawn(move || reader.serve(queue))
        .map_err(|e| DbErr::Custom(format!("cannot start the lookup thread: {e}")))?;
    Ok(())
}

/// The statements are declared first, so they are finalized before the connection closes.
struct Reader {
    stmt: Statement,
    /// Prepared once: parsing them per batch showed in the profile.
    begin: Statement,
    commit: Statement,
    conn: Connection,
}

impl Reader {
    fn serve(mut self, mut queue: mpsc::Receiver<Miss>) {
        let Reader {
            stmt,
            begin,
            commit,
            conn,
        } = &mut self;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            super::take_queued(&mut queue, &mut batch, MAX_BATCH);
            // One read transaction for the batch: one snapshot, one lock on the WAL index.
            let began = begin.run();
            for miss in batch.drain(..) {
                let answer = match &began {
                    Ok(()) => stmt.find(&crate::ids::hex(&miss.key)),
                    Err(e) => Err(e.clone()),
                };
                // A miss whose publish gave up (its deadline passed) needs no answer.
                let _ = miss.reply.send(answer);
            }
            if began.is_ok() && commit.run().is_err() {
                let _ = conn.exec(c"ROLLBACK");
            }
        }
    }
}

/// A connection this thread alone uses (opened `NOMUTEX`).
struct Connection(NonNull<ffi::sqlite3>);

// SAFETY: the handle moves to the lookup thread once and is used there only; SQLite allows a
// connection to change threads when nothing else uses it at the time.
unsafe impl Send for Connection {}

impl Connection {
    fn open_read_only(name: &CStr) -> Result<Connection, DbErr> {
        let flags = ffi::SQLITE_OPEN_READONLY
            | ffi::SQLITE_OPEN_NOMUTEX
            | ffi::SQLITE_OPEN_PRIVATECACHE
            // As sqlx opens it, so a `file:` name means the same to both.
            | ffi::SQLITE_OPEN_URI;
        let mut db = null_mut();
        // SAFETY: `name` is NUL-terminated; `db` receives a handle (even on failure, when it
        // must still be closed: the `Connection` below does that).
        let rc = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags, null()) };
        let conn = NonNull::new(db)
            .map(Connection)
            .ok_or_else(|| DbErr::Custom("SQLite could not allocate a connection".into()))?;
        if rc != ffi::SQLITE_OK {
            return Err(conn.error("open"));
        }
        // As the pool's connections: a checkpoint or a writer's commit can hold a reader back
        // for a moment, and the same page cache (this one serves every lookup).
        let ms = c_int::try_from(BUSY_TIMEOUT.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: a valid handle.
        unsafe { ffi::sqlite3_busy_timeout(conn.0.as_ptr(), ms) };
        let cache = CString::new(format!("PRAGMA cache_size = {CACHE_SIZE}"))
            .map_err(|_| DbErr::Custom("cache_size".into()))?;
        conn.exec(&cache)?;
        Ok(conn)
    }

    fn exec(&self, sql: &CStr) -> Result<(), DbErr> {
        // SAFETY: a valid handle and a NUL-terminated statement; no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(self.0.as_ptr(), sql.as_ptr(), None, null_mut(), null_mut())
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error("exec"))
        }
    }

    fn prepare(&self, sql: &CStr) -> Result<Statement, DbErr> {
        let mut stmt = null_mut();
        // SAFETY: a valid handle and a NUL-terminated statement.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                self.0.as_ptr(),
                sql.as_ptr(),
                -1,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Statement { stmt, db: self.0 }),
            _ => Err(self.error("prepare")),
        }
    }

    fn error(&self, what: &str) -> DbErr {
        error_of(self.0, what)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and used by nothing else, and its one statement is
        // finalized (see `Reader`).
        unsafe { ffi::sqlite3_close(self.0.as_ptr()) };
    }
}

/// SQLite's message for the last failure on `db`. It names tables and constraints, never
/// values.
fn error_of(db: NonNull<ffi::sqlite3>, what: &str) -> DbErr {
    // SAFETY: a valid handle; the message is NUL-terminated and copied before the next call.
    let msg = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) };
    DbErr::Custom(format!("SQLite lookup {what}: {}", msg.to_string_lossy()))
}

/// A prepared statement of the lookup connection.
struct Statement {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: NonNull<ffi::sqlite3>,
}

// SAFETY: as for `Connection`, whose thread it moves to with it.
unsafe impl Send for Statement {}

impl Statement {
    /// Runs a statement that returns no rows.
    fn run(&mut self) -> Result<(), DbErr> {
        let s = self.stmt.as_ptr();
        // SAFETY: a valid statement without parameters.
        let rc = unsafe { ffi::sqlite3_step(s) };
        // SAFETY: as above; makes it ready to run again.
        unsafe { ffi::sqlite3_reset(s) };
        if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            Err(error_of(self.db, "step"))
        }
    }

    /// The row whose `node_hash` is `key`, if any (the column is unique).
    fn find(&mut self, key: &str) -> Result<Option<Model>, DbErr> {
        let s = self.stmt.as_ptr();
        let len = c_int::try_from(key.len()).map_err(|_| DbErr::Custom("key too long".into()))?;
        // SAFETY: a valid statement; SQLITE_TRANSIENT makes SQLite copy the key.
        let rc = unsafe {
            ffi::sqlite3_reset(s);
            ffi::sqlite3_bind_text(s, 1, key.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT())
        };
        if rc != ffi::SQLITE_OK {
            return Err(error_of(self.db, "bind"));
        }
        // SAFETY: a valid, bound statement.
        let found = match unsafe { ffi::sqlite3_step(s) } {
            ffi::SQLITE_ROW => self.row().map(Some),
            ffi::SQLITE_DONE => Ok(None),
            _ => Err(error_of(self.db, "step")),
        };
        // Ends the statement's read at once rather than at the next lookup.
        // SAFETY: a valid statement.
        unsafe { ffi::sqlite3_reset(s) };
        found
    }

    fn row(&self) -> Result<Model, DbErr> {
        Ok(Model {
            id: self.int(0),
            dialect: self.text(1, "dialect")?,
            provider: self.text(2, "provider")?,
            account: self.text(3, "account")?,
            domain: self.text(4, "domain")?,
            device_key: self.text(5, "device_key")?,
            device_id: self.optional_text(6, "device_id")?,
            muc: self.optional_text(7, "muc")?,
            token: self.text(8, "token")?,
            second_token: self.optional_text(9, "second_token")?,
            webpush_p256dh: self.optional_text(10, "webpush_p256dh")?,
            webpush_auth: self.optional_text(11, "webpush_auth")?,
            node: self.text(12, "node")?,
            node_hash: self.text(13, "node_hash")?,
            secret: self.optional_text(14, "secret")?,
            created_at: self.time(15, "created_at")?,
            updated_at: self.time(16, "updated_at")?,
            last_success_at: self.optional_time(17, "last_success_at")?,
            last_error_at: self.optional_time(18, "last_error_at")?,
            last_error: self.optional_text(19, "last_error")?,
        })
    }

    fn is_null(&self, col: c_int) -> bool {
        // SAFETY: a statement on a row; `col` is one of its columns.
        unsafe { ffi::sqlite3_column_type(self.stmt.as_ptr(), col) == ffi::SQLITE_NULL }
    }

    fn int(&self, col: c_int) -> i64 {
        // SAFETY: as in `is_null`.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), col) }
    }

    /// The column as text, borrowed until the statement moves on.
    fn str(&self, col: c_int, name: &str) -> Result<Option<&str>, DbErr> {
        if self.is_null(col) {
            return Ok(None);
        }
        let s = self.stmt.as_ptr();
        // SAFETY: as in `is_null`; `sqlite3_column_text` before `sqlite3_column_bytes`, as
        // SQLite asks, and the bytes stay valid until the next step or reset, which needs
        // `&mut self`.
        let bytes = unsafe {
            let p = ffi::sqlite3_column_text(s, col);
            let n = usize::try_from(ffi::sqlite3_column_bytes(s, col)).unwrap_or(0);
            if p.is_null() {
                return Err(DbErr::Custom(format!(
                    "registrations.{name}: out of memory"
                )));
            }
            std::slice::from_raw_parts(p, n)
        };
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DbErr::Type(format!("registrations.{name} is not UTF-8")))
    }

    fn optional_text(&self, col: c_int, name: &str) -> Result<Option<String>, DbErr> {
        Ok(self.str(col, name)?.map(str::to_owned))
    }

    fn text(&self, col: c_int, name: &str) -> Result<String, DbErr> {
        self.optional_text(col, name)?
            .ok_or_else(|| DbErr::Type(format!("registrations.{name} is NULL")))
    }

    fn optional_time(&self, col: c_int, name: &str) -> Result<Option<DateTime<Utc>>, DbErr> {
        self.str(col, name)?
            .map(|s| {
                parse_time(s)
                    .ok_or_else(|| DbErr::Type(format!("registrations.{name} is not a time")))
            })
            .transpose()
    }

    fn time(&self, col: c_int, name: &str) -> Result<DateTime<Utc>, DbErr> {
        self.optional_time(col, name)?
            .ok_or_else(|| DbErr::Type(format!("registrations.{name} is NULL")))
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: a valid statement, finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// Times as sqlx writes them (RFC 3339), or as SQLite's own `datetime()` does (UTC without
/// an offset), for rows touched by hand.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%F %T%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_written() {
        let t = super::super::now();
        assert_eq!(
            parse_time(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)),
            Some(t)
        );
        assert_eq!(
            parse_time("2026-12-06 14:00:01"),
            "2026-12-06T14:00:01Z".parse().ok()
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
