//! The memberships scenario: users see the rows of the projects they are a member of. Each
//! user starts in `--memberships-per-user` random projects; during the run memberships are
//! joined and left at `--membership-rate`, and at the end every user's rows are checked
//! against what PostgreSQL's own join selects.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::args::Load;
use crate::record::Seen;
use crate::record::now_us;
use crate::report::Completeness;
use crate::schema::{scope_name, user_name};

/// Connections changing memberships in parallel.
const CONNECTIONS: usize = 4;

/// Who is a member of what, shared by the membership writer and the subscribers.
pub struct Members {
    table: String,
    column: String,
    projects: usize,
    state: Mutex<State>,
    /// When each join still awaiting its first moved-in row was sent: `(user, project)`.
    joins: Mutex<HashMap<(usize, usize), u64>>,
    /// Rows each user's subscriber holds now, to see when every one has settled.
    pub held: Vec<AtomicUsize>,
}

struct State {
    /// Each user's projects now.
    current: Vec<Vec<usize>>,
    /// Every project each user was ever a member of: a row of any other is foreign.
    ever: Vec<HashSet<usize>>,
    /// Users with a change in flight: one at a time per user, so commits keep their order.
    busy: HashSet<usize>,
    changes: u64,
}

enum Step {
    Join(usize, usize),
    Leave(usize, usize),
}

impl Members {
    /// Replaces the memberships table's rows with `users` users (plus `extra` with none),
    /// each a member of `--memberships-per-user` random projects.
    pub async fn seed(db: &tokio_postgres::Client, load: &Load, users: usize, extra: usize) -> Result<Members, String> {
        let per_user = load.memberships_per_user.clamp(1, load.scopes);
        let mut rng = rand::rng();
        let current: Vec<Vec<usize>> = (0..users)
            .map(|_| rand::seq::index::sample(&mut rng, load.scopes, per_user).into_vec())
            .chain((0..extra).map(|_| Vec::new()))
            .collect();
        let (names, projects): (Vec<String>, Vec<String>) = current
            .iter()
            .enumerate()
            .flat_map(|(u, ps)| ps.iter().map(move |&p| (user_name(u), scope_name(p))))
            .unzip();
        let table = crate::schema::members_table(load);
        let col = &load.scope_column;
        db.execute(&format!("delete from {table}"), &[]).await.map_err(|e| e.to_string())?;
        db.execute(
            &format!("insert into {table} (user_id, {col}) select * from unnest($1::text[], $2::text[])"),
            &[&names, &projects],
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Members {
            table,
            column: col.clone(),
            projects: load.scopes,
            state: Mutex::new(State {
                ever: current.iter().map(|ps| ps.iter().copied().collect()).collect(),
                current,
                busy: HashSet::new(),
                changes: 0,
            }),
            joins: Mutex::new(HashMap::new()),
            held: (0..users + extra).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// When the join of `user` to `project` was sent, the first time its rows arrive.
    pub fn take_join(&self, user: usize, project: usize) -> Option<u64> {
        self.joins.lock().unwrap().remove(&(user, project))
    }

    /// Membership changes committed so far.
    pub fn changes(&self) -> u64 {
        self.state.lock().unwrap().changes
    }

    /// Joins and leaves at `rate` a second for `duration`, alternating, over
    /// [`CONNECTIONS`] connections to `database_url`; users of the first `users` only.
    pub async fn change(&self, database_url: &str, users: usize, rate: f64, duration: Duration) -> Result<(), String> {
        let mut dbs = Vec::new();
        for _ in 0..CONNECTIONS {
            dbs.push(
                gateway::db::connect(&gateway::db::parse_url(database_url).map_err(|e| e.to_string())?)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let join = format!("insert into {} (user_id, {}) values ($1, $2)", self.table, self.column);
        let leave = format!("delete from {} where user_id = $1 and {} = $2", self.table, self.column);
        let (tickets, rx) = tokio::sync::mpsc::channel::<u64>(1024);
        let rx = tokio::sync::Mutex::new(rx);
        let workers = dbs.into_iter().map(|db| {
            let (rx, join, leave) = (&rx, &join, &leave);
            async move {
                loop {
                    let Some(n) = rx.lock().await.recv().await else { break };
                    let step = self.pick(users, n % 2 == 0);
                    let (sql, user, project) = match step {
                        Step::Join(u, p) => {
                            self.joins.lock().unwrap().insert((u, p), now_us());
                            (join, u, p)
                        }
                        Step::Leave(u, p) => (leave, u, p),
                    };
                    let done = db.execute(sql, &[&user_name(user), &scope_name(project)]).await;
                    let mut state = self.state.lock().unwrap();
                    state.busy.remove(&user);
                    state.changes += 1;
                    done.map_err(|e| format!("changing a membership: {e}"))?;
                }
                Ok::<_, String>(())
            }
        });
        let pace = async move {
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < duration {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    if tickets.send(sent).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let (_, results) = tokio::join!(pace, futures::future::join_all(workers));
        results.into_iter().collect()
    }

    /// The next change, of a user with none in flight: a join to a project the user is not
    /// in (when `join` or the user is in only one), else leaving one of theirs.
    fn pick(&self, users: usize, join: bool) -> Step {
        let mut rng = rand::rng();
        let mut state = self.state.lock().unwrap();
        let user = loop {
            let u = rng.random_range(0..users);
            if !state.busy.contains(&u) {
                break u;
            }
        };
        state.busy.insert(user);
        let mine = &mut state.current[user];
        let step = if (join || mine.len() <= 1) && mine.len() < self.projects {
            let p = loop {
                let p = rng.random_range(0..self.projects);
                if !mine.contains(&p) {
                    break p;
                }
            };
            mine.push(p);
            Step::Join(user, p)
        } else {
            let p = *mine.choose(&mut rng).expect("a user in a project");
            mine.retain(|&q| q != p);
            Step::Leave(user, p)
        };
        if let Step::Join(u, p) = step {
            state.ever[u].insert(p);
        }
        step
    }

    /// The ids of the rows each user should hold now, by PostgreSQL's own join.
    pub async fn expected(&self, db: &tokio_postgres::Client, table: &str) -> Result<Vec<HashSet<u64>>, String> {
        let rows = db
            .query(
                &format!(
                    "select substr(m.user_id, 2)::int, t.id from {members} m join {table} t on t.{col} = m.{col}",
                    members = self.table,
                    col = self.column
                ),
                &[],
            )
            .await
            .map_err(|e| format!("reading who should hold what: {e}"))?;
        let mut expected = vec![HashSet::new(); self.held.len()];
        for row in rows {
            if let Some(user) = expected.get_mut(row.get::<_, i32>(0) as usize) {
                user.insert(row.get::<_, i64>(1) as u64);
            }
        }
        Ok(expected)
    }

    /// Whether every subscriber holds as many rows as `expected` says.
    pub fn settled(&self, expected: &[HashSet<u64>]) -> usize {
        self.held.iter().zip(expected).filter(|(h, e)| h.load(Ordering::Relaxed) == e.len()).count()
    }

    /// The users whose subscriber does not hold exactly their rows.
    pub fn faulty(expected: &[HashSet<u64>], seen: &[Seen]) -> Vec<usize> {
        let holds = |s: &Seen| {
            s.held.len() == expected[s.identity].len() && s.held.keys().all(|id| expected[s.identity].contains(id))
        };
        seen.iter().filter(|s| !holds(s)).map(|s| s.identity).collect()
    }

    /// Compares what each user's subscriber ended with to `expected`: rows missing, rows
    /// still held that should have moved out (`stale`), rows received twice without a
    /// delete between, and rows of a project the user never joined (`foreign`).
    pub fn check(&self, expected: &[HashSet<u64>], seen: &[Seen]) -> Completeness {
        let state = self.state.lock().unwrap();
        let mut c = Completeness::default();
        let mut examples = Vec::new();
        for s in seen {
            let (want, ever) = (&expected[s.identity], &state.ever[s.identity]);
            let missing: Vec<&u64> = want.iter().filter(|id| !s.held.contains_key(id)).collect();
            let stale: Vec<(&u64, &usize)> = s.held.iter().filter(|(id, _)| !want.contains(id)).collect();
            c.missing += missing.len() as u64;
            c.stale += stale.len() as u64;
            c.duplicated += s.duplicated;
            c.foreign += s.projects.iter().filter(|p| !ever.contains(p)).count() as u64;
            let user = user_name(s.identity);
            examples.extend(missing.iter().map(|id| format!("{user} lacks row {id}")));
            examples.extend(stale.iter().map(|(id, p)| format!("{user} still holds row {id} of {}", scope_name(**p))));
        }
        // A few, to start from when a run fails (the gateway's log has the rest).
        for example in examples.iter().take(10) {
            eprintln!("loadtest: {example}");
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_counts_rows_missing_stale_twice_and_of_projects_never_joined() {
        let members = Members {
            table: "m".into(),
            column: "scope".into(),
            projects: 3,
            state: Mutex::new(State {
                current: vec![vec![0]],
                ever: vec![[0, 1].into()],
                busy: HashSet::new(),
                changes: 0,
            }),
            joins: Mutex::new(HashMap::new()),
            held: vec![AtomicUsize::new(0)],
        };
        let expected = vec![HashSet::from([1, 2])];
        let seen = Seen {
            identity: 0,
            held: HashMap::from([(1, 0), (7, 1)]),
            duplicated: 1,
            projects: [0, 1, 2].into(),
            ..Seen::default()
        };
        let c = members.check(&expected, &[seen]);
        assert_eq!(
            (c.missing, c.stale, c.duplicated, c.foreign),
            (1, 1, 1, 1),
            "2 missing, 7 stale, project 2 foreign"
        );
    }
}
