//! The embedded sale store: books in memory, every change journaled to an append-only file
//! and fsynced before the caller is answered, so a restart (even SIGKILL) loses no answered
//! reservation and no confirmed order.
//!
//! The journal is JSON lines ([`Entry`]); on start it is replayed in order. Writes go through
//! one writer thread that batches whatever is queued into a single `write` + `fsync` (group
//! commit), so 20,000 buys in a second cost a few hundred fsyncs, not 20,000. Entries are
//! queued while the state lock is held, so the journal's order is the order the books
//! changed in.

use super::book::SaleBook;
use super::{
    Announced, Announcement, Bought, BuyRefusal, BuyRequest, DeliveredOrderEvent, OrderEvent,
    Product, ReleaseReason, Reservation, SalePosition, SaleRecord, SaleSnapshot, SaleStore,
    Settled, StoreError,
};
use async_trait::async_trait;
use ferry_client::protocol::commerce::{ProductId, ReservationId, SaleId};
use ferry_client::protocol::RoomId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::oneshot;

/// One journal line (short-lived: built, encoded, dropped; size differences do not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Entry {
    Product {
        product: Product,
    },
    Sale {
        sale: SaleRecord,
    },
    /// A reservation's new state, with the order event it produced (if any).
    Reservation {
        reservation: Reservation,
        event: Option<OrderEvent>,
    },
    Ack {
        sale: SaleId,
        group: String,
        ids: Vec<String>,
    },
    /// An announcement of a sale was published: never make it again.
    Announced {
        sale: SaleId,
        what: Announcement,
    },
    /// Written by earlier versions for announcements (`started:<sale>`, `ended:<sale>`);
    /// replayed as [`Entry::Announced`], never written any more.
    Claim {
        what: String,
        #[allow(dead_code)]
        until: u64,
    },
}

/// A consumer group's progress through one sale's order events.
#[derive(Default)]
struct Group {
    /// Next event index (0-based) never delivered to the group.
    next: usize,
    /// Delivered, unacknowledged: index → (last delivery ms, deliveries); 0 ms = due now.
    pending: BTreeMap<usize, (u64, u64)>,
    /// While replaying the journal: every acknowledged index (turned into `next` and
    /// `pending` once replay ends, so unacknowledged events below the highest ack are
    /// delivered again rather than skipped).
    replay_acked: BTreeSet<usize>,
}

#[derive(Default)]
struct State {
    products: BTreeMap<ProductId, Product>,
    books: HashMap<SaleId, SaleBook>,
    /// Creation order: a sale's position is its index here plus one.
    sale_order: Vec<SaleId>,
    positions: HashMap<SaleId, SalePosition>,
    /// Sales the sweep still visits, by position (not journaled: rebuilt on replay from the
    /// announcements and holds).
    live: BTreeMap<SalePosition, SaleId>,
    /// Each room's sales, oldest first.
    by_room: HashMap<RoomId, Vec<(SalePosition, SaleId)>>,
    announced: HashMap<SaleId, Announced>,
    /// Announcement leases: who publishes what until when (in memory only: a restart lets
    /// the announcement be tried again, which is what an unrecorded one needs).
    leases: HashMap<(SaleId, Announcement), u64>,
    orders: HashMap<SaleId, Vec<OrderEvent>>,
    groups: HashMap<(SaleId, String), Group>,
    claims: HashMap<String, u64>,
}

/// A queued journal write and who waits for its fsync.
struct Write_ {
    line: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The embedded store. `journal: None` keeps everything in memory only (tests, demos).
pub struct MemorySaleStore {
    state: Mutex<State>,
    journal: Option<std::sync::mpsc::Sender<Write_>>,
    path: Option<PathBuf>,
    /// Set when a journal write failed: memory may now hold changes the disk lacks, so the
    /// store refuses everything (and `/readyz` fails) until restarted from the journal.
    poisoned: Arc<AtomicBool>,
}

fn event_id(index: usize) -> String {
    format!("0-{}", index + 1)
}

fn event_index(id: &str) -> Option<usize> {
    id.strip_prefix("0-")?.parse::<usize>().ok()?.checked_sub(1)
}

impl MemorySaleStore {
    /// A store without a journal: state is lost on restart.
    pub fn in_memory() -> Self {
        Self {
            state: Mutex::new(State::default()),
            journal: None,
            path: None,
            poisoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Open (or create) the journal at `path`, replay it, and start the writer thread.
    pub fn open(path: &Path) -> Result<Self, String> {
        Self::open_with(path, |file| Box::new(file))
    }

    /// [`MemorySaleStore::open`] with the journal file wrapped by `sink` (tests slow it down).
    fn open_with(
        path: &Path,
        sink: impl FnOnce(std::fs::File) -> Box<dyn JournalSink>,
    ) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut state = State::default();
        let mut valid_len = 0u64;
        if let Ok(file) = std::fs::File::open(path) {
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            let mut number = 0u64;
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                number += 1;
                if !line.ends_with('\n') {
                    // A torn final write (crash mid-append): never acknowledged, drop it.
                    tracing::warn!(path = %path.display(), line = number, "journal ends with a partial line; truncating it");
                    break;
                }
                let entry: Entry = serde_json::from_str(line.trim_end())
                    .map_err(|e| format!("{} line {number} is corrupt: {e}", path.display()))?;
                state.replay(entry);
                valid_len += n as u64;
            }
        }
        state.finish_replay();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.set_len(valid_len)
            .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
        let (tx, rx) = std::sync::mpsc::channel::<Write_>();
        let poisoned = Arc::new(AtomicBool::new(false));
        let flag = poisoned.clone();
        let sink = sink(file);
        std::thread::Builder::new()
            .name("ferry-journal".into())
            .spawn(move || writer(sink, rx, flag))
            .map_err(|e| format!("cannot start the journal writer: {e}"))?;
        tracing::info!(path = %path.display(), sales = state.books.len(), products = state.products.len(), "commerce journal replayed");
        Ok(Self {
            state: Mutex::new(state),
            journal: Some(tx),
            path: Some(path.to_owned()),
            poisoned,
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Relaxed) {
            return Err(StoreError::Unavailable(
                "a journal write failed; restart the node to recover from the journal".into(),
            ));
        }
        Ok(())
    }

    /// Wait until everything queued so far is on disk (before showing it to anyone).
    ///
    /// Read the state first, then wait on the barrier, then answer: entries are queued while
    /// the state lock is held, so every change a read saw was queued before the barrier and
    /// is on disk once it is answered. (Waiting first and reading after could show a change
    /// queued in between, not yet on disk.)
    async fn barrier(&self) -> Result<(), StoreError> {
        let Some(tx) = &self.journal else {
            return Ok(());
        };
        let (done, rx) = oneshot::channel();
        if tx
            .send(Write_ {
                line: Vec::new(),
                done,
            })
            .is_err()
        {
            return Err(StoreError::Unavailable(
                "the journal writer has stopped".into(),
            ));
        }
        Self::durable(Some(rx)).await
    }

    /// Queue an entry (call with the state lock held, so journal order = change order).
    fn queue(&self, entry: &Entry) -> Option<oneshot::Receiver<Result<(), String>>> {
        let tx = self.journal.as_ref()?;
        let (done, rx) = oneshot::channel();
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                let _ = done.send(Err(format!("cannot encode a journal entry: {e}")));
                return Some(rx);
            }
        };
        line.push(b'\n');
        if let Err(std::sync::mpsc::SendError(w)) = tx.send(Write_ { line, done }) {
            let _ = w.done.send(Err("the journal writer has stopped".into()));
        }
        Some(rx)
    }

    async fn durable(rx: Option<oneshot::Receiver<Result<(), String>>>) -> Result<(), StoreError> {
        let Some(rx) = rx else { return Ok(()) };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e)),
            Err(_) => Err(StoreError::Unavailable(
                "the journal writer has stopped".into(),
            )),
        }
    }

    pub fn journal_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Where the writer thread appends: the journal file (write, then `fdatasync`).
trait JournalSink: Send + 'static {
    /// Append `buf` and make it durable.
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()>;
}

impl JournalSink for std::fs::File {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_all(buf)?;
        self.sync_data()
    }
}

/// The writer thread: append everything queued, fsync once, answer every waiter. An empty
/// line is a barrier: it writes nothing and is answered once what was queued before it is
/// on disk (earlier batches were fsynced before this one started).
fn writer(
    mut file: Box<dyn JournalSink>,
    rx: std::sync::mpsc::Receiver<Write_>,
    poisoned: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|w| w.line.len()).sum());
        for w in &batch {
            buf.extend_from_slice(&w.line);
        }
        let result = if poisoned.load(Relaxed) {
            Err("the journal failed earlier; restart the node".to_owned())
        } else if buf.is_empty() {
            Ok(())
        } else {
            file.append(&buf)
                .map_err(|e| format!("journal write failed: {e}"))
        };
        if let Err(e) = &result {
            if !poisoned.swap(true, Relaxed) {
                tracing::error!(error = %e, "commerce journal write failed; the sale store refuses requests until restarted");
            }
        }
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

impl State {
    fn replay(&mut self, entry: Entry) {
        match entry {
            Entry::Product { product } => {
                self.products.insert(product.id.clone(), product);
            }
            Entry::Sale { sale } => match self.books.get_mut(&sale.id) {
                // A later definition (ended early, markets changed) keeps the book.
                Some(book) => book.redefine(sale),
                None => self.add_sale(sale),
            },
            Entry::Reservation { reservation, event } => {
                let sale = reservation.sale.clone();
                if let Some(book) = self.books.get_mut(&sale) {
                    book.restore(reservation);
                }
                if let Some(event) = event {
                    self.orders.entry(sale).or_default().push(event);
                }
            }
            Entry::Ack { sale, group, ids } => {
                let g = self.groups.entry((sale, group)).or_default();
                g.replay_acked
                    .extend(ids.iter().filter_map(|id| event_index(id)));
            }
            Entry::Announced { sale, what } => {
                self.announced.entry(sale).or_default().set(what);
            }
            Entry::Claim { what, .. } => {
                let legacy = [
                    ("started:", Announcement::Started),
                    ("ended:", Announcement::Ended),
                ];
                for (prefix, kind) in legacy {
                    if let Some(sale) = what.strip_prefix(prefix) {
                        let sale = SaleId(sale.to_owned());
                        self.announced.entry(sale).or_default().set(kind);
                    }
                }
            }
        }
    }

    /// A new sale: its book, its position, its room's listing; live until retired.
    fn add_sale(&mut self, sale: SaleRecord) {
        self.sale_order.push(sale.id.clone());
        let position = self.sale_order.len() as SalePosition;
        self.positions.insert(sale.id.clone(), position);
        self.live.insert(position, sale.id.clone());
        self.by_room
            .entry(sale.room.clone())
            .or_default()
            .push((position, sale.id.clone()));
        self.books.insert(sale.id.clone(), SaleBook::new(sale));
    }

    /// After replay: a group resumes after its highest acknowledged event, and every event
    /// below it that was never acknowledged is pending, due for delivery at once.
    fn finish_replay(&mut self) {
        // The sweep has nothing more to do for a sale whose announcements are both made and
        // which holds nothing: it is not live. (An ended sale whose end was not announced,
        // or with holds to release, stays live.)
        let done: Vec<SalePosition> = self
            .live
            .iter()
            .filter(|(_, id)| {
                let announced = self.announced.get(*id).copied().unwrap_or_default();
                let held = self.books.get(*id).map_or(0, SaleBook::reserved_units);
                announced.all() && held == 0
            })
            .map(|(position, _)| *position)
            .collect();
        for position in done {
            self.live.remove(&position);
        }
        for g in self.groups.values_mut() {
            let acked = std::mem::take(&mut g.replay_acked);
            let Some(top) = acked.last().copied() else {
                continue;
            };
            g.next = g.next.max(top + 1);
            for i in 0..g.next {
                if !acked.contains(&i) {
                    g.pending.entry(i).or_insert((0, 1));
                }
            }
        }
    }

    fn snapshot(&self, id: &SaleId) -> Option<SaleSnapshot> {
        let book = self.books.get(id)?;
        Some(SaleSnapshot {
            sale: book.sale.clone(),
            remaining: book.remaining,
            reserved: book.reserved_units(),
            confirmed: book.confirmed,
            version: book.version,
            announced: self.announced.get(id).copied().unwrap_or_default(),
        })
    }
}

#[async_trait]
impl SaleStore for MemorySaleStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn put_product(&self, product: Product) -> Result<(), StoreError> {
        self.check()?;
        let rx = {
            let mut st = self.state.lock();
            let rx = self.queue(&Entry::Product {
                product: product.clone(),
            });
            st.products.insert(product.id.clone(), product);
            rx
        };
        Self::durable(rx).await
    }

    async fn product(&self, id: &ProductId) -> Result<Option<Product>, StoreError> {
        self.check()?;
        let product = self.state.lock().products.get(id).cloned();
        self.barrier().await?;
        Ok(product)
    }

    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        self.check()?;
        let products = self.state.lock().products.values().cloned().collect();
        self.barrier().await?;
        Ok(products)
    }

    async fn create_sale(&self, sale: SaleRecord) -> Result<(), StoreError> {
        self.check()?;
        let rx = {
            let mut st = self.state.lock();
            if st.books.contains_key(&sale.id) {
                return Err(StoreError::SaleExists);
            }
            let rx = self.queue(&Entry::Sale { sale: sale.clone() });
            st.add_sale(sale);
            rx
        };
        Self::durable(rx).await
    }

    async fn sale(&self, id: &SaleId) -> Result<Option<SaleSnapshot>, StoreError> {
        // Stock shown to anyone (GET /api/sales, stock events) must be on disk: a buy whose
        // fsync is still running is not shown before it is.
        self.check()?;
        let snapshot = self.state.lock().snapshot(id);
        self.barrier().await?;
        Ok(snapshot)
    }

    async fn sales(&self) -> Result<Vec<SaleId>, StoreError> {
        self.check()?;
        let sales = self.state.lock().sale_order.clone();
        self.barrier().await?;
        Ok(sales)
    }

    async fn live_sales(
        &self,
        after: SalePosition,
        limit: usize,
    ) -> Result<Vec<(SalePosition, SaleId)>, StoreError> {
        self.check()?;
        let st = self.state.lock();
        Ok(st
            .live
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(p, id)| (*p, id.clone()))
            .collect())
    }

    async fn retire_sale(&self, id: &SaleId) -> Result<(), StoreError> {
        self.check()?;
        let mut st = self.state.lock();
        if let Some(position) = st.positions.get(id).copied() {
            st.live.remove(&position);
        }
        Ok(())
    }

    async fn room_sales(
        &self,
        room: &RoomId,
        before: Option<SalePosition>,
        limit: usize,
    ) -> Result<Vec<(SalePosition, SaleId)>, StoreError> {
        self.check()?;
        let st = self.state.lock();
        let before = before.unwrap_or(SalePosition::MAX);
        Ok(st
            .by_room
            .get(room)
            .map(|sales| {
                sales
                    .iter()
                    .rev()
                    .filter(|(p, _)| *p < before)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn end_sale(&self, id: &SaleId, now: u64) -> Result<SaleSnapshot, StoreError> {
        self.check()?;
        let (rx, snap) = {
            let mut st = self.state.lock();
            let book = st.books.get_mut(id).ok_or(StoreError::SaleNotFound)?;
            book.end(now);
            let sale = book.sale.clone();
            let rx = self.queue(&Entry::Sale { sale });
            let snap = st.snapshot(id).ok_or(StoreError::SaleNotFound)?;
            (rx, snap)
        };
        Self::durable(rx).await?;
        Ok(snap)
    }

    async fn set_sale_markets(
        &self,
        id: &SaleId,
        markets: BTreeSet<String>,
    ) -> Result<(), StoreError> {
        self.check()?;
        let rx = {
            let mut st = self.state.lock();
            let book = st.books.get_mut(id).ok_or(StoreError::SaleNotFound)?;
            book.set_markets(markets);
            let sale = book.sale.clone();
            self.queue(&Entry::Sale { sale })
        };
        Self::durable(rx).await
    }

    async fn buy(
        &self,
        sale: &SaleId,
        req: BuyRequest,
    ) -> Result<Result<Bought, BuyRefusal>, StoreError> {
        self.change(
            sale,
            |book| book.buy(req),
            |outcome| match outcome {
                Ok(Bought::New(r, event)) => Some((r, &**event)),
                _ => None,
            },
        )
        .await
    }

    async fn confirm(
        &self,
        sale: &SaleId,
        id: &ReservationId,
        payment_ref: &str,
        now: u64,
    ) -> Result<Option<Settled>, StoreError> {
        self.settle(sale, |book| book.confirm(id, payment_ref, now))
            .await
    }

    async fn release(
        &self,
        sale: &SaleId,
        id: &ReservationId,
        reason: ReleaseReason,
        now: u64,
    ) -> Result<Option<Settled>, StoreError> {
        self.settle(sale, |book| book.release(id, reason, now))
            .await
    }

    async fn reservation(
        &self,
        sale: &SaleId,
        id: &ReservationId,
    ) -> Result<Option<Reservation>, StoreError> {
        self.check()?;
        let reservation = self
            .state
            .lock()
            .books
            .get(sale)
            .and_then(|b| b.reservation(id).cloned());
        self.barrier().await?;
        Ok(reservation)
    }

    async fn expire_due(
        &self,
        sale: &SaleId,
        now: u64,
        max: usize,
    ) -> Result<Vec<Reservation>, StoreError> {
        self.check()?;
        let (rx, released) = {
            let mut st = self.state.lock();
            let Some(book) = st.books.get_mut(sale) else {
                return Ok(Vec::new());
            };
            let mut released = Vec::new();
            let mut events = Vec::new();
            let mut last_rx = None;
            for id in book.due(now, max) {
                if let Some(Settled::Now(r, event)) = book.release(&id, ReleaseReason::Expired, now)
                {
                    last_rx = self.queue(&Entry::Reservation {
                        reservation: r.clone(),
                        event: Some((*event).clone()),
                    });
                    released.push(r);
                    events.push(*event);
                }
            }
            st.orders.entry(sale.clone()).or_default().extend(events);
            (last_rx, released)
        };
        // The writer answers in order: the last entry's fsync covers the earlier ones.
        Self::durable(rx).await?;
        Ok(released)
    }

    async fn read_orders(
        &self,
        sale: &SaleId,
        group: &str,
        count: usize,
        redeliver_after_ms: u64,
        now: u64,
    ) -> Result<Vec<DeliveredOrderEvent>, StoreError> {
        self.check()?;
        let delivered = self.deliver(sale, group, count, redeliver_after_ms, now)?;
        // An order system must never see an event the disk does not have yet (the events
        // picked were queued before this barrier).
        self.barrier().await?;
        Ok(delivered)
    }

    async fn ack_orders(
        &self,
        sale: &SaleId,
        group: &str,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        self.check()?;
        let (rx, acked) = {
            let mut st = self.state.lock();
            if !st.books.contains_key(sale) {
                return Err(StoreError::SaleNotFound);
            }
            let g = st
                .groups
                .entry((sale.clone(), group.to_owned()))
                .or_default();
            let mut acked = Vec::new();
            for id in ids {
                if let Some(i) = event_index(id) {
                    if g.pending.remove(&i).is_some() {
                        acked.push(id.clone());
                    }
                }
            }
            let rx = (!acked.is_empty()).then(|| {
                self.queue(&Entry::Ack {
                    sale: sale.clone(),
                    group: group.to_owned(),
                    ids: acked.clone(),
                })
            });
            (rx.flatten(), acked.len() as u64)
        };
        Self::durable(rx).await?;
        Ok(acked)
    }

    async fn all_orders(&self, sale: &SaleId) -> Result<Vec<OrderEvent>, StoreError> {
        self.check()?;
        let events = self
            .state
            .lock()
            .orders
            .get(sale)
            .cloned()
            .unwrap_or_default();
        self.barrier().await?;
        Ok(events)
    }

    async fn claim(&self, what: &str, ttl_ms: u64, now: u64) -> Result<bool, StoreError> {
        self.check()?;
        // Throttles only: kept in memory (a restart may repeat a throttled update, which is
        // harmless; announcements have their own durable record).
        let until = now.saturating_add(ttl_ms);
        let mut st = self.state.lock();
        if st.claims.len() > 10_000 {
            st.claims.retain(|_, held| *held > now);
        }
        if st.claims.get(what).is_some_and(|held| *held > now) {
            return Ok(false);
        }
        st.claims.insert(what.to_owned(), until);
        Ok(true)
    }

    async fn claim_announcement(
        &self,
        sale: &SaleId,
        what: Announcement,
        lease_ms: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.check()?;
        let mut st = self.state.lock();
        if !st.books.contains_key(sale) {
            return Err(StoreError::SaleNotFound);
        }
        if st.announced.get(sale).is_some_and(|a| a.get(what)) {
            return Ok(false);
        }
        let key = (sale.clone(), what);
        if st.leases.get(&key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        st.leases.insert(key, now.saturating_add(lease_ms));
        Ok(true)
    }

    async fn mark_announced(&self, sale: &SaleId, what: Announcement) -> Result<(), StoreError> {
        self.check()?;
        let rx = {
            let mut st = self.state.lock();
            if !st.books.contains_key(sale) {
                return Err(StoreError::SaleNotFound);
            }
            st.leases.remove(&(sale.clone(), what));
            let announced = st.announced.entry(sale.clone()).or_default();
            if announced.get(what) {
                None
            } else {
                announced.set(what);
                self.queue(&Entry::Announced {
                    sale: sale.clone(),
                    what,
                })
            }
        };
        match rx {
            Some(rx) => Self::durable(Some(rx)).await,
            None => self.barrier().await,
        }
    }

    async fn ready(&self) -> bool {
        !self.poisoned.load(Relaxed)
    }
}

impl MemorySaleStore {
    /// Pick the events a consumer group gets now and mark them delivered (under the lock).
    fn deliver(
        &self,
        sale: &SaleId,
        group: &str,
        count: usize,
        redeliver_after_ms: u64,
        now: u64,
    ) -> Result<Vec<DeliveredOrderEvent>, StoreError> {
        let mut st = self.state.lock();
        if !st.books.contains_key(sale) {
            return Err(StoreError::SaleNotFound);
        }
        let total = st.orders.get(sale).map_or(0, Vec::len);
        let mut picked: Vec<(usize, u64)> = Vec::new();
        {
            let g = st
                .groups
                .entry((sale.clone(), group.to_owned()))
                .or_default();
            for (i, (last, n)) in g.pending.iter_mut() {
                if picked.len() >= count {
                    break;
                }
                // `last == 0`: restored from the journal, never delivered by this process.
                if *last == 0 || now.saturating_sub(*last) >= redeliver_after_ms {
                    *last = now;
                    *n += 1;
                    picked.push((*i, *n));
                }
            }
            while picked.len() < count && g.next < total {
                g.pending.insert(g.next, (now, 1));
                picked.push((g.next, 1));
                g.next += 1;
            }
        }
        let events = st.orders.get(sale);
        Ok(picked
            .into_iter()
            .filter_map(|(i, n)| {
                Some(DeliveredOrderEvent {
                    id: event_id(i),
                    deliveries: n,
                    event: events?.get(i)?.clone(),
                })
            })
            .collect())
    }

    async fn settle(
        &self,
        sale: &SaleId,
        step: impl FnOnce(&mut SaleBook) -> Option<Settled>,
    ) -> Result<Option<Settled>, StoreError> {
        self.change(sale, step, |outcome| match outcome {
            Some(Settled::Now(r, event)) => Some((r, &**event)),
            _ => None,
        })
        .await
    }

    /// Apply `step` to the sale's book; when `changed` finds a reservation changed, journal
    /// it with its order event and wait for the fsync. Otherwise (a replay, an already
    /// settled reservation) wait on a barrier: the state shown may have been changed a moment
    /// ago by a call still waiting for its own fsync.
    async fn change<T>(
        &self,
        sale: &SaleId,
        step: impl FnOnce(&mut SaleBook) -> T,
        changed: impl Fn(&T) -> Option<(&Reservation, &OrderEvent)>,
    ) -> Result<T, StoreError> {
        self.check()?;
        let (rx, outcome) = {
            let mut st = self.state.lock();
            let book = st.books.get_mut(sale).ok_or(StoreError::SaleNotFound)?;
            let outcome = step(book);
            let rx = match changed(&outcome) {
                Some((r, event)) => {
                    let rx = self.queue(&Entry::Reservation {
                        reservation: r.clone(),
                        event: Some(event.clone()),
                    });
                    st.orders
                        .entry(sale.clone())
                        .or_default()
                        .push(event.clone());
                    rx
                }
                None => None,
            };
            (rx, outcome)
        };
        match rx {
            Some(rx) => Self::durable(Some(rx)).await?,
            None => self.barrier().await?,
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::protocol::commerce::Money;
    use ferry_client::protocol::{RoomId, UserId};
    use std::sync::{Condvar, Mutex as StdMutex};
    use std::time::Duration;

    /// A journal whose appends wait while the gate is closed: an fsync that takes a while.
    #[derive(Clone, Default)]
    struct Gate(Arc<(StdMutex<bool>, Condvar)>);

    impl Gate {
        fn set(&self, closed: bool) {
            let (lock, cv) = &*self.0;
            *lock.lock().expect("gate lock") = closed;
            cv.notify_all();
        }
    }

    struct GatedFile(std::fs::File, Gate);

    impl JournalSink for GatedFile {
        fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let (lock, cv) = &*(self.1).0;
            let mut closed = lock.lock().expect("gate lock");
            while *closed {
                closed = cv.wait(closed).expect("gate lock");
            }
            drop(closed);
            self.0.append(buf)
        }
    }

    fn open_gated(path: &Path, gate: &Gate) -> MemorySaleStore {
        let gate = gate.clone();
        MemorySaleStore::open_with(path, move |file| Box::new(GatedFile(file, gate))).expect("open")
    }

    /// What a read shows (stock, a product, a reservation) is on disk: while a buy's fsync is
    /// still running, `sale()` and `product()` wait for it instead of showing the new stock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_show_what_is_not_on_disk_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = Gate::default();
        let store = Arc::new(open_gated(&dir.path().join("j"), &gate));
        let sale = SaleRecord {
            id: SaleId("s".into()),
            room: RoomId("r".into()),
            product: ProductId("p".into()),
            quantity: 10,
            price_cny: 100,
            per_buyer_limit: 10,
            starts_at: 0,
            ends_at: 1_000_000,
            hold_ms: 60_000,
            markets: ["us".to_owned()].into(),
            ended_at: None,
            created_at: 0,
        };
        store.create_sale(sale.clone()).await.expect("sale");
        // The disk stalls; a buy is applied in memory and waits for its fsync.
        gate.set(true);
        let buying = tokio::spawn({
            let store = store.clone();
            async move {
                let req = BuyRequest {
                    buyer: UserId("b".into()),
                    market: "us".into(),
                    quantity: 1,
                    key: "k".into(),
                    now: 10,
                    new_id: ReservationId("s.1".into()),
                    amount_display: Money {
                        currency: "USD".into(),
                        minor: 14,
                    },
                };
                store.buy(&SaleId("s".into()), req).await
            }
        });
        let product = Product {
            id: ProductId("p".into()),
            title: "t".into(),
            description: String::new(),
            image_url: String::new(),
            lang: "zh".into(),
            price_cny: 100,
            stock: 0,
            markets: BTreeMap::new(),
            merchant: "m".into(),
            glossary: None,
            translations: BTreeMap::new(),
        };
        let putting = tokio::spawn({
            let store = store.clone();
            async move { store.put_product(product).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.state.lock().books[&sale.id].remaining,
            9,
            "the buy is applied in memory"
        );
        let reading = tokio::spawn({
            let store = store.clone();
            async move {
                (
                    store.sale(&SaleId("s".into())).await,
                    store.product(&ProductId("p".into())).await,
                )
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !reading.is_finished(),
            "a read answered while what it shows was not on disk"
        );
        assert!(!buying.is_finished() && !putting.is_finished());
        gate.set(false);
        let (snapshot, product) = reading.await.expect("read");
        let snapshot = snapshot.expect("sale").expect("exists");
        assert_eq!((snapshot.remaining, snapshot.version), (9, 1));
        assert!(product.expect("product").is_some());
        assert!(matches!(
            buying.await.expect("buy"),
            Ok(Ok(Bought::New(..)))
        ));
        putting.await.expect("put").expect("put");
    }

    #[tokio::test]
    async fn unacknowledged_events_below_the_highest_ack_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let sale = SaleRecord {
            id: SaleId("s".into()),
            room: RoomId("r".into()),
            product: ProductId("p".into()),
            quantity: 10,
            price_cny: 100,
            per_buyer_limit: 10,
            starts_at: 0,
            ends_at: 1_000_000,
            hold_ms: 60_000,
            markets: ["us".to_owned()].into(),
            ended_at: None,
            created_at: 0,
        };
        {
            let store = MemorySaleStore::open(&path).expect("open");
            store.create_sale(sale.clone()).await.expect("sale");
            for i in 0..3 {
                let req = BuyRequest {
                    buyer: UserId(format!("b{i}")),
                    market: "us".into(),
                    quantity: 1,
                    key: "k".into(),
                    now: 10,
                    new_id: ReservationId(format!("s.{i}")),
                    amount_display: Money {
                        currency: "USD".into(),
                        minor: 14,
                    },
                };
                store
                    .buy(&sale.id, req)
                    .await
                    .expect("buy")
                    .expect("reserved");
            }
            let read = store
                .read_orders(&sale.id, "erp", 10, 30_000, 100)
                .await
                .expect("read");
            assert_eq!(read.len(), 3);
            // Only the last one is acknowledged.
            let acked = store
                .ack_orders(&sale.id, "erp", &[read[2].id.clone()])
                .await
                .expect("ack");
            assert_eq!(acked, 1);
        }
        let store = MemorySaleStore::open(&path).expect("reopen");
        let again = store
            .read_orders(&sale.id, "erp", 10, 30_000, 200)
            .await
            .expect("read");
        let ids: Vec<&str> = again.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, vec!["0-1", "0-2"]);
        // Recorded announcements survive too (and are never claimed again); a lease does
        // not (the announcement may not have been made).
        let ended = Announcement::Ended;
        let started = Announcement::Started;
        assert!(store
            .claim_announcement(&sale.id, started, 5_000, 300)
            .await
            .expect("claim"));
        assert!(store
            .claim_announcement(&sale.id, ended, 5_000, 300)
            .await
            .expect("claim"));
        store.mark_announced(&sale.id, ended).await.expect("mark");
        drop(store);
        let store = MemorySaleStore::open(&path).expect("reopen");
        let far = 300 + 30 * 86_400_000;
        assert!(!store
            .claim_announcement(&sale.id, ended, 5_000, far)
            .await
            .expect("claim"));
        assert!(store
            .claim_announcement(&sale.id, started, 5_000, 400)
            .await
            .expect("an unrecorded announcement is tried again"));
        let snap = store.sale(&sale.id).await.expect("sale").expect("exists");
        assert_eq!(
            (snap.announced.started, snap.announced.ended),
            (false, true)
        );
        // The journal of an earlier version recorded announcements as long claims.
        drop(store);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("append");
            f.write_all(b"{\"t\":\"claim\",\"what\":\"started:s\",\"until\":604800300}\n")
                .expect("write");
        }
        let store = MemorySaleStore::open(&path).expect("reopen");
        let snap = store.sale(&sale.id).await.expect("sale").expect("exists");
        assert!(snap.announced.all());
    }
}
