//! The served log: which posts every feed page served, to whom, at which positions, from which
//! source, reason and recommendation run (migration V8: `served_pages`, read through the view
//! `served_impressions`).
//!
//! Never on the request path: a page is handed to a bounded queue with `try_send` (a full queue
//! drops the page and counts it), and one writer task drains the queue and writes batches with
//! `COPY ... FROM STDIN (FORMAT binary)` once a batch holds `SERVED_LOG_BATCH_ROWS` posts or its
//! oldest page waited `SERVED_LOG_FLUSH_MS`. A batch that cannot be written after
//! [`WRITE_ATTEMPTS`] tries is dropped and counted. [`ServedLogWriter::shutdown`] writes what is
//! queued before the process exits. docs/api.md ("Served log") states the loss bounds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use feedrank_core::config::{Reason, Source};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::config::ServedLogConfig;
use crate::metrics::{ServedLogDrop, ServedLogMetrics};

/// Tries per batch before it is dropped; the waits between them.
pub const WRITE_ATTEMPTS: usize = 3;
const RETRY_WAITS: [Duration; WRITE_ATTEMPTS - 1] =
    [Duration::from_millis(200), Duration::from_secs(1)];
/// Daily partitions are prepared for today and this many days after it.
const PARTITION_DAYS_AHEAD: i32 = 2;
/// Partitions are prepared again (and old ones dropped) at least this often.
const PARTITION_CHECK: Duration = Duration::from_secs(3600);
/// Pages taken from the queue in one wake-up of the writer.
const RECEIVE_AT_ONCE: usize = 256;

/// One served post, as the page's order gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServedPost {
    pub post: Uuid,
    pub source: Source,
    pub reason: Option<Reason>,
}

/// One served feed page: one message on the queue, one row of `served_pages`.
#[derive(Debug, Clone)]
pub struct ServedPage {
    /// The response's `metadata.requestId`.
    pub request_id: Uuid,
    pub user: Uuid,
    /// The position of `posts[0]` in the whole feed (0-based): the page's offset.
    pub first_position: usize,
    pub posts: Vec<ServedPost>,
    /// The recommendation run whose list the page blended, and that run's serving model (the
    /// configuration version).
    pub run_id: Option<i64>,
    pub model_id: Option<i64>,
    /// The user's experiment arms, `experiment:arm` (experiments::Assignment::labels).
    pub arms: Vec<String>,
    pub served_at: DateTime<Utc>,
}

/// The code of `source` in `served_pages.source_codes` (the table `served_sources` of V8).
/// Codes are never reused: a new source gets the next one, in a migration too.
pub fn source_code(source: Source) -> u8 {
    match source {
        Source::Personalized => 1,
        Source::Fresh => 2,
        Source::BecauseYouLiked => 3,
        Source::Trending => 4,
        Source::Fallback => 5,
    }
}

/// The code of `reason` in `served_pages.reason_codes` (the table `served_reasons` of V8).
pub fn reason_code(reason: Reason) -> u8 {
    match reason {
        Reason::SimilarUsers => 1,
        Reason::SimilarContent => 2,
        Reason::Fresh => 3,
        Reason::Popular => 4,
        Reason::LikedAuthor => 5,
        Reason::BecauseYouLiked => 6,
        Reason::Trending => 7,
    }
}

/// A page's posts as `served_pages` packs them: the ids (16 bytes each), the source codes and the
/// reason codes (a byte each; reason 0: none).
pub fn packed(posts: &[ServedPost]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut ids = Vec::with_capacity(16 * posts.len());
    let mut sources = Vec::with_capacity(posts.len());
    let mut reasons = Vec::with_capacity(posts.len());
    for p in posts {
        ids.extend_from_slice(p.post.as_bytes());
        sources.push(source_code(p.source));
        reasons.push(p.reason.map_or(0, reason_code));
    }
    (ids, sources, reasons)
}

/// The request path's end of the log.
pub struct ServedLog {
    /// `None` when the log is off.
    queue: Option<mpsc::Sender<ServedPage>>,
    /// The writer's end, until [`ServedLog::start_writer`] takes it (pages queue up meanwhile).
    unstarted: Mutex<Option<mpsc::Receiver<ServedPage>>>,
    cfg: ServedLogConfig,
    metrics: ServedLogMetrics,
}

impl ServedLog {
    /// The queue, without its writer (no runtime needed): see [`ServedLog::start_writer`].
    pub fn new(cfg: &ServedLogConfig, metrics: ServedLogMetrics) -> ServedLog {
        let (queue, unstarted) = if cfg.enabled {
            let (tx, rx) = mpsc::channel(cfg.queue_pages);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        ServedLog {
            queue,
            unstarted: Mutex::new(unstarted),
            cfg: cfg.clone(),
            metrics,
        }
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `page` for the writer, or drops it (counted) when the queue is full. Never waits.
    pub fn record(&self, page: ServedPage) {
        let Some(queue) = &self.queue else {
            return;
        };
        if let Err(e) = queue.try_send(page) {
            let (mpsc::error::TrySendError::Full(page) | mpsc::error::TrySendError::Closed(page)) =
                e;
            self.metrics
                .dropped(ServedLogDrop::QueueFull, page.posts.len() as u64);
        }
    }

    /// Starts the writer task on the current runtime; `None` when the log is off or its writer
    /// was started already.
    pub fn start_writer(&self, pg: Pool) -> Option<ServedLogWriter> {
        let rx = self
            .unstarted
            .lock()
            .expect("the served log's receiver lock")
            .take()?;
        let (stop, stopped) = oneshot::channel();
        let writer = Writer {
            pg,
            cfg: self.cfg.clone(),
            metrics: self.metrics.clone(),
            partitions: Partitions::default(),
        };
        let task = tokio::spawn(writer.run(rx, stopped));
        Some(ServedLogWriter { stop, task })
    }
}

/// The running writer task.
pub struct ServedLogWriter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ServedLogWriter {
    /// Stops taking pages, writes what is queued and waits for it, at most `timeout`; false when
    /// the timeout ran out first (what was not written then is lost).
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let _ = self.stop.send(());
        matches!(tokio::time::timeout(timeout, self.task).await, Ok(Ok(())))
    }
}

/// Pages waiting to be written.
#[derive(Default)]
struct Batch {
    pages: Vec<ServedPage>,
    rows: usize,
    /// When its oldest page arrived.
    since: Option<Instant>,
}

impl Batch {
    fn push(&mut self, page: ServedPage, now: Instant) {
        self.rows += page.posts.len();
        self.pages.push(page);
        self.since.get_or_insert(now);
    }

    fn is_full(&self, batch_rows: usize) -> bool {
        self.rows >= batch_rows
    }

    /// When the batch must be written at the latest; `None` while it is empty.
    fn deadline(&self, flush_interval: Duration) -> Option<Instant> {
        self.since.map(|t| t + flush_interval)
    }

    fn take(&mut self) -> (Vec<ServedPage>, usize) {
        self.since = None;
        (
            std::mem::take(&mut self.pages),
            std::mem::take(&mut self.rows),
        )
    }
}

/// What the writer knows of `served_pages`' partitions.
#[derive(Default)]
struct Partitions {
    /// Partitions exist from the last preparation's first day through this day.
    prepared: Option<(NaiveDate, NaiveDate)>,
    checked_at: Option<Instant>,
}

impl Partitions {
    /// The first day to prepare partitions from, when rows of `first_day..=last_day` are about
    /// to be written on `today`; `None` when the partitions prepared already cover them.
    fn needed(
        &self,
        today: NaiveDate,
        first_day: NaiveDate,
        last_day: NaiveDate,
        now: Instant,
    ) -> Option<NaiveDate> {
        let from = first_day.min(today);
        let through = last_day.max(today);
        let covered = self
            .prepared
            .is_some_and(|(start, end)| start <= from && through <= end);
        let recent = self
            .checked_at
            .is_some_and(|t| now.duration_since(t) < PARTITION_CHECK);
        (!(covered && recent)).then_some(from)
    }

    fn prepared(&mut self, from: NaiveDate, through: NaiveDate, now: Instant) {
        self.prepared = Some((from, through));
        self.checked_at = Some(now);
    }

    fn forget(&mut self) {
        *self = Partitions::default();
    }
}

struct Writer {
    pg: Pool,
    cfg: ServedLogConfig,
    metrics: ServedLogMetrics,
    partitions: Partitions,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<ServedPage>, mut stop: oneshot::Receiver<()>) {
        let mut batch = Batch::default();
        let mut received = Vec::with_capacity(RECEIVE_AT_ONCE);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                n = rx.recv_many(&mut received, RECEIVE_AT_ONCE) => {
                    if n == 0 {
                        break; // every sender is gone
                    }
                    let now = Instant::now();
                    for page in received.drain(..) {
                        batch.push(page, now);
                    }
                    if batch.is_full(self.cfg.batch_rows) {
                        self.write(&mut batch).await;
                    }
                }
                _ = sleep_until(batch.deadline(self.cfg.flush_interval)) => {
                    self.write(&mut batch).await;
                }
            }
        }
        // Shutting down: nothing more is queued (a page served now is counted as dropped);
        // what is queued is written.
        rx.close();
        while let Some(page) = rx.recv().await {
            batch.push(page, Instant::now());
            if batch.is_full(self.cfg.batch_rows) {
                self.write(&mut batch).await;
            }
        }
        self.write(&mut batch).await;
    }

    /// Writes the batch (emptying it), retrying a few times; a batch that still fails is dropped.
    async fn write(&mut self, batch: &mut Batch) {
        let (pages, rows) = batch.take();
        if pages.is_empty() {
            return;
        }
        let started = Instant::now();
        for attempt in 0..WRITE_ATTEMPTS {
            match self.copy(&pages).await {
                Ok(()) => {
                    self.metrics.written(rows as u64, started.elapsed());
                    return;
                }
                Err(e) => {
                    self.metrics.write_failed();
                    // (the partitions may be why: prepared again on the next try)
                    self.partitions.forget();
                    tracing::warn!(error = %e, attempt = attempt + 1, rows, "served log: writing a batch failed");
                    if let Some(wait) = RETRY_WAITS.get(attempt) {
                        tokio::time::sleep(*wait).await;
                    }
                }
            }
        }
        self.metrics
            .dropped(ServedLogDrop::WriteFailed, rows as u64);
    }

    async fn copy(&mut self, pages: &[ServedPage]) -> Result<(), String> {
        let client = self.pg.get().await.map_err(|e| e.to_string())?;
        let days = pages.iter().map(|p| p.served_at.date_naive());
        let first_day = days.clone().min().expect("a batch is not empty");
        let last_day = days.max().expect("a batch is not empty");
        let today = Utc::now().date_naive();
        let now = Instant::now();
        if let Some(from) = self.partitions.needed(today, first_day, last_day, now) {
            let through = last_day.max(today) + chrono::Days::new(PARTITION_DAYS_AHEAD as u64);
            let ahead = (through - from).num_days() as i32;
            let retention = self.cfg.retention_days.min(i32::MAX as u32) as i32;
            client
                .execute(
                    "SELECT served_pages_maintain($1, $2, $3)",
                    &[&from, &ahead, &retention],
                )
                .await
                .map_err(|e| format!("preparing the partitions: {e}"))?;
            self.partitions.prepared(from, through, now);
        }
        let sink = client
            .copy_in(
                "COPY served_pages (request_id, user_id, first_position, post_ids, source_codes,
                                    reason_codes, run_id, model_id, arms, served_at)
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(|e| e.to_string())?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::UUID,
                Type::UUID,
                Type::INT4,
                Type::BYTEA,
                Type::BYTEA,
                Type::BYTEA,
                Type::INT8,
                Type::INT8,
                Type::TEXT_ARRAY,
                Type::TIMESTAMPTZ,
            ],
        );
        let mut writer = std::pin::pin!(writer);
        for page in pages {
            let first_position = i32::try_from(page.first_position).unwrap_or(i32::MAX);
            let (post_ids, sources, reasons) = packed(&page.posts);
            let row: [&(dyn ToSql + Sync); 10] = [
                &page.request_id,
                &page.user,
                &first_position,
                &post_ids,
                &sources,
                &reasons,
                &page.run_id,
                &page.model_id,
                &page.arms,
                &page.served_at,
            ];
            writer
                .as_mut()
                .write(&row)
                .await
                .map_err(|e| e.to_string())?;
        }
        writer.finish().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn page(posts: usize) -> ServedPage {
        ServedPage {
            request_id: Uuid::new_v4(),
            user: Uuid::new_v4(),
            first_position: 0,
            posts: vec![
                ServedPost {
                    post: Uuid::new_v4(),
                    source: Source::Fallback,
                    reason: None,
                };
                posts
            ],
            run_id: None,
            model_id: None,
            arms: Vec::new(),
            served_at: Utc::now(),
        }
    }

    #[test]
    fn a_batch_is_due_when_full_or_when_its_oldest_page_waited_the_interval() {
        let mut b = Batch::default();
        let t0 = Instant::now();
        let interval = Duration::from_secs(1);
        assert_eq!(
            b.deadline(interval),
            None,
            "an empty batch waits for nothing"
        );
        b.push(page(30), t0);
        b.push(page(30), t0 + Duration::from_millis(500));
        assert_eq!(
            b.deadline(interval),
            Some(t0 + interval),
            "the oldest page sets it"
        );
        assert!(!b.is_full(100) && b.is_full(60));
        let (pages, rows) = b.take();
        assert_eq!((pages.len(), rows), (2, 60));
        assert_eq!((b.rows, b.deadline(interval)), (0, None));
    }

    #[test]
    fn partitions_are_prepared_once_per_hour_and_for_days_not_covered() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let t0 = Instant::now();
        let mut p = Partitions::default();
        assert_eq!(p.needed(day(2), day(2), day(2), t0), Some(day(2)));
        p.prepared(day(2), day(4), t0);
        assert_eq!(p.needed(day(2), day(2), day(2), t0), None);
        assert_eq!(p.needed(day(3), day(2), day(3), t0), None, "covered ahead");
        assert_eq!(
            p.needed(day(2), day(1), day(2), t0),
            Some(day(1)),
            "a page of yesterday"
        );
        assert_eq!(
            p.needed(day(5), day(5), day(5), t0),
            Some(day(5)),
            "a new day"
        );
        assert_eq!(
            p.needed(day(2), day(2), day(2), t0 + PARTITION_CHECK),
            Some(day(2)),
            "hourly, for the retention"
        );
        p.forget();
        assert_eq!(p.needed(day(2), day(2), day(2), t0), Some(day(2)));
    }

    #[test]
    fn every_source_and_reason_has_its_own_code() {
        let sources: HashSet<u8> = Source::ALL.into_iter().map(source_code).collect();
        assert_eq!(sources.len(), Source::ALL.len());
        let reasons: HashSet<u8> = Reason::ALL.into_iter().map(reason_code).collect();
        assert_eq!(reasons.len(), Reason::ALL.len());
        assert!(!reasons.contains(&0), "0 is a post without a reason");
    }

    #[test]
    fn a_pages_posts_pack_into_ids_sources_and_reasons() {
        let posts = [
            ServedPost {
                post: Uuid::from_u128(7),
                source: Source::Fresh,
                reason: Some(Reason::Fresh),
            },
            ServedPost {
                post: Uuid::from_u128(9),
                source: Source::Fallback,
                reason: None,
            },
        ];
        let (ids, sources, reasons) = packed(&posts);
        assert_eq!(&ids[..16], Uuid::from_u128(7).as_bytes());
        assert_eq!(&ids[16..], Uuid::from_u128(9).as_bytes());
        assert_eq!(
            sources,
            [source_code(Source::Fresh), source_code(Source::Fallback)]
        );
        assert_eq!(reasons, [reason_code(Reason::Fresh), 0]);
    }

    fn settings(queue_pages: usize) -> ServedLogConfig {
        ServedLogConfig {
            enabled: true,
            queue_pages,
            batch_rows: 1000,
            flush_interval: Duration::from_secs(3600),
            retention_days: 30,
        }
    }

    #[test]
    fn a_full_queue_drops_the_page_and_counts_its_posts() {
        let cfg = settings(1);
        let metrics = crate::metrics::Metrics::new([] as [&str; 0]).served_log;
        let log = ServedLog::new(&cfg, metrics.clone());
        log.record(page(3));
        log.record(page(4));
        log.record(page(5));
        assert_eq!(metrics.dropped_total(ServedLogDrop::QueueFull), 9);
        let off = ServedLog::new(
            &ServedLogConfig {
                enabled: false,
                ..cfg
            },
            metrics.clone(),
        );
        off.record(page(3));
        assert!(!off.is_on());
        assert_eq!(metrics.dropped_total(ServedLogDrop::QueueFull), 9);
    }

    /// PostgreSQL is not listening on port 9: every try fails at connect (no mock: the real
    /// client against a closed port).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_cannot_be_written_is_retried_then_dropped_and_counted() {
        let metrics = crate::metrics::Metrics::new(["cache"]);
        let log = ServedLog::new(&settings(16), metrics.served_log.clone());
        let pool = crate::db::pool(
            "postgres://postgres@127.0.0.1:9/none",
            2,
            Duration::from_millis(200),
        )
        .unwrap();
        let writer = log.start_writer(pool).unwrap();
        assert!(
            log.start_writer(
                crate::db::pool("postgres://x@127.0.0.1:9/y", 1, Duration::from_millis(1)).unwrap()
            )
            .is_none(),
            "one writer"
        );
        log.record(page(7));
        let started = Instant::now();
        assert!(writer.shutdown(Duration::from_secs(20)).await);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the retries are bounded"
        );
        assert_eq!(
            metrics.served_log.dropped_total(ServedLogDrop::WriteFailed),
            7
        );
        let text = metrics.render(&crate::metrics::PoolGauge {
            max_size: 2,
            size: 0,
            available: 0,
            waiting: 0,
        });
        assert!(
            text.contains(&format!(
                "feedrank_served_log_write_failures_total {WRITE_ATTEMPTS}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("feedrank_served_log_written_total 0\n"),
            "{text}"
        );
    }
}
