//! `mana-todo`: the Todo pilot on the mana-sync client. A todo list that
//! lives on the device (works offline, writes instantly), syncs with a
//! mana-sync server when asked (`sync`) or continuously (`watch`), and is the
//! way to try sync from a shell. Todos live in lists: "My todos" (the
//! user's own) and shared lists (shared spaces, see `lists`). The logic is
//! in `mana-sync-client`; this is the command line around it.

mod lists;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use lists::Target;
use mana_sync_client::{
    ClientError, LocalStore, Query, Record, Role, SeedRecord, StoreOptions, SyncClient, SyncStatus,
};
use serde_json::{Value, json};

/// The app id and collection on the server.
const APP_ID: &str = "todo";
const TASKS: &str = "tasks";

/// A local-first todo list that syncs through a mana-sync server.
#[derive(Parser, Debug)]
#[command(name = "mana-todo", version, about)]
struct Cli {
    /// Directory of the local store (default: a per-user data directory).
    #[arg(long, global = true, value_name = "DIR", env = "MANA_TODO_DATA")]
    data: Option<PathBuf>,
    /// Do not put the onboarding todos in a new store.
    #[arg(long, global = true)]
    no_seed: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Adds one todo per title; prints each new id on its own line.
    Add {
        /// The list to add to (name or id; default: My todos).
        #[arg(long, value_name = "LIST")]
        list: Option<String>,
        /// The titles.
        #[arg(required = true, value_name = "TITLE")]
        titles: Vec<String>,
    },
    /// Lists the todos, by list (or those of one list).
    List {
        /// Only this list's todos (name or id).
        #[arg(long, value_name = "LIST")]
        list: Option<String>,
        /// Print a JSON array of `{id, title, done, createdAt, spaceId?, …}`.
        #[arg(long)]
        json: bool,
    },
    /// Shows the lists: My todos, and the shared lists with your role in
    /// each (refreshed from the server when one is given, else as of the
    /// last sync).
    Lists {
        #[command(flatten)]
        server: OptionalServerArgs,
        /// Print a JSON array of `{id, name, role, todos}`.
        #[arg(long)]
        json: bool,
    },
    /// Creates a shared list (you own it); prints its id.
    NewList {
        /// Its name (several words are joined with spaces).
        #[arg(required = true, value_name = "NAME")]
        name: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Shares a list you own with another user, or changes their role.
    Share {
        /// The list (name or id).
        list: String,
        /// The user (their user id; in dev mode, the name they sign in with).
        #[arg(long = "with", value_name = "USER")]
        user: String,
        /// editor (reads and writes), viewer (reads only) or owner.
        #[arg(long, default_value = "editor", value_parser = ["editor", "viewer", "owner"])]
        role: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Removes a user from a list you own.
    Unshare {
        /// The list (name or id).
        list: String,
        /// The user.
        #[arg(long = "with", value_name = "USER")]
        user: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Shows a shared list's members and their roles.
    Members {
        /// The list (name or id).
        list: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Print a JSON array of `{userId, role}`.
        #[arg(long)]
        json: bool,
    },
    /// Leaves a shared list; its todos leave this device.
    Leave {
        /// The list (name or id).
        list: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Marks a todo as done (ID or a unique prefix of it).
    Done {
        /// The todo's id.
        id: String,
    },
    /// Gives a todo a new title.
    Rename {
        /// The todo's id.
        id: String,
        /// The new title (several words are joined with spaces).
        #[arg(required = true, value_name = "TITLE")]
        title: Vec<String>,
    },
    /// Deletes a todo.
    Rm {
        /// The todo's id.
        id: String,
    },
    /// Pushes local changes and pulls everyone else's. The first sync of a
    /// guest store signs it in and makes its todos the account's.
    Sync {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Shows the sync status: local-only, synced, or pending N (and the last error).
    Status,
    /// Stays connected and prints the list again whenever it changes.
    Watch {
        #[command(flatten)]
        server: ServerArgs,
        /// Print each list as one line of JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// The mana-sync server, e.g. http://localhost:3050.
    #[arg(long, value_name = "URL", env = "MANA_SYNC_SERVER")]
    server: String,
    /// A token for it (`mana-sync token --user NAME` in dev mode).
    #[arg(
        long,
        value_name = "JWT",
        env = "MANA_SYNC_TOKEN",
        hide_env_values = true
    )]
    token: String,
}

/// `--server`/`--token` where they are optional.
#[derive(clap::Args, Debug)]
struct OptionalServerArgs {
    /// The mana-sync server, e.g. http://localhost:3050.
    #[arg(long, value_name = "URL", env = "MANA_SYNC_SERVER")]
    server: Option<String>,
    /// A token for it.
    #[arg(
        long,
        value_name = "JWT",
        env = "MANA_SYNC_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mana-todo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.data {
        Some(dir) => Ok(dir.clone()),
        None => dirs::data_dir()
            .map(|dir| dir.join("mana-todo"))
            .ok_or_else(|| anyhow!("no per-user data directory on this system; pass --data DIR")),
    }
}

/// The onboarding todos. Their ids and fields are the same on every device,
/// so the seeds of several devices of one account merge into these three.
fn seed() -> Vec<SeedRecord> {
    let todos = [
        (
            "onboarding-1",
            "Welcome! Your todos live on this device and work offline",
        ),
        ("onboarding-2", "Tick a todo off with `mana-todo done ID`"),
        (
            "onboarding-3",
            "Sync your devices: `mana-todo sync --server URL --token JWT`",
        ),
    ];
    todos
        .iter()
        .enumerate()
        .map(|(i, (id, title))| SeedRecord {
            collection: TASKS.into(),
            id: (*id).into(),
            data: json!({
                "title": title,
                "done": false,
                // Fixed, so that every device seeds the same record; sorts first.
                "createdAt": format!("1970-01-01T00:00:00.00{}Z", i + 1),
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        })
        .collect()
}

fn open(cli: &Cli) -> Result<LocalStore> {
    let dir = data_dir(cli)?;
    let mut options = StoreOptions::new(APP_ID, &[TASKS]);
    if !cli.no_seed {
        options.seed = seed();
    }
    LocalStore::open(dir.join("todo.db"), options)
        .with_context(|| format!("cannot open the todo list in {}", dir.display()))
}

fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

fn todos_query() -> Query {
    Query::new(TASKS).order_by("createdAt")
}

fn run(cli: Cli) -> Result<()> {
    let store = open(&cli)?;
    match cli.command {
        Command::Add { list, titles } => {
            let target = match &list {
                Some(name) => lists::resolve(&store, name)?,
                None => Target::Mine,
            };
            for title in titles {
                let id = store.insert_in(
                    target.space_id(),
                    TASKS,
                    json!({ "title": title, "done": false, "createdAt": now() }),
                )?;
                println!("{id}");
            }
        }
        Command::List { list, json } => {
            let mut todos = store.query(&todos_query())?;
            if let Some(name) = &list {
                let target = lists::resolve(&store, name)?;
                todos.retain(|todo| todo.space_id.as_deref() == target.space_id());
            }
            if json {
                println!("{}", to_json(&todos));
            } else if list.is_some() {
                print!("{}", readable(&todos));
            } else {
                print!("{}", by_list(&store, &todos)?);
            }
        }
        Command::Lists { server, json } => {
            if let (Some(url), Some(token)) = (server.server, server.token) {
                let (client, _) = connect(&store, &ServerArgs { server: url, token })?;
                if let Err(error) = runtime()?.block_on(client.refresh_spaces()) {
                    if !error.is_transient() {
                        return Err(error.into());
                    }
                    eprintln!("{error}\nShowing the lists as of the last sync.");
                }
            }
            print!(
                "{}",
                lists::show(&store, &store.query(&todos_query())?, json)?
            );
        }
        Command::NewList { name, server } => {
            let (client, _) = connect(&store, &server)?;
            print!(
                "{}",
                runtime()?.block_on(lists::create(&client, &name.join(" ")))?
            );
        }
        Command::Share {
            list,
            user,
            role,
            server,
        } => {
            let (client, _) = connect(&store, &server)?;
            let role: Role = role.parse()?;
            print!(
                "{}",
                runtime()?.block_on(lists::share(&client, &list, &user, role))?
            );
        }
        Command::Unshare { list, user, server } => {
            let (client, _) = connect(&store, &server)?;
            print!(
                "{}",
                runtime()?.block_on(lists::unshare(&client, &list, &user))?
            );
        }
        Command::Members { list, server, json } => {
            let (client, _) = connect(&store, &server)?;
            print!(
                "{}",
                runtime()?.block_on(lists::members(&client, &list, json))?
            );
        }
        Command::Leave { list, server } => {
            let (client, _) = connect(&store, &server)?;
            print!("{}", runtime()?.block_on(lists::leave(&client, &list))?);
        }
        Command::Done { id } => {
            let todo = resolve(&store, &id)?;
            store.update(TASKS, &todo.id, object(json!({ "done": true })))?;
            println!("Done: {}", title(&todo));
        }
        Command::Rename { id, title: words } => {
            let todo = resolve(&store, &id)?;
            let new_title = words.join(" ");
            store.update(TASKS, &todo.id, object(json!({ "title": new_title })))?;
            println!("Renamed: {new_title}");
        }
        Command::Rm { id } => {
            let todo = resolve(&store, &id)?;
            store.delete(TASKS, &todo.id)?;
            println!("Deleted: {}", title(&todo));
        }
        Command::Sync { server } => sync(&store, &server)?,
        Command::Status => status(&store)?,
        Command::Watch { server, json } => watch(&store, &server, json)?,
    }
    Ok(())
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

fn title(todo: &Record) -> &str {
    todo.get("title").and_then(Value::as_str).unwrap_or("")
}

fn to_json(todos: &[Record]) -> String {
    Value::Array(todos.iter().map(Record::to_json).collect()).to_string()
}

fn readable(todos: &[Record]) -> String {
    if todos.is_empty() {
        return "No todos. Add one with `mana-todo add TITLE`.\n".into();
    }
    let width = todos
        .iter()
        .map(|t| title(t).chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    let mut out = String::new();
    for todo in todos {
        let done = todo.get("done").and_then(Value::as_bool).unwrap_or(false);
        let mark = if done { "x" } else { " " };
        out.push_str(&format!("[{mark}] {:<width$}  {}\n", title(todo), todo.id));
    }
    out
}

/// Every todo under the heading of its list ("My todos" first, then the
/// shared lists by name); without shared lists, just the todos.
fn by_list(store: &LocalStore, todos: &[Record]) -> Result<String> {
    let spaces = store.spaces()?;
    let mut groups: Vec<Option<String>> = vec![None];
    groups.extend(spaces.iter().map(|space| Some(space.id.clone())));
    for todo in todos {
        if !groups.contains(&todo.space_id) {
            groups.push(todo.space_id.clone());
        }
    }
    if groups.len() == 1 {
        return Ok(readable(todos));
    }
    let mut out = String::new();
    for group in &groups {
        let members: Vec<Record> = todos
            .iter()
            .filter(|todo| &todo.space_id == group)
            .cloned()
            .collect();
        out.push_str(&format!(
            "== {} ==\n",
            lists::heading(store, group.as_deref())?
        ));
        if !members.is_empty() {
            out.push_str(&readable(&members));
        }
    }
    Ok(out)
}

/// The todo an id names: the exact id, or the one live todo it is a prefix of.
fn resolve(store: &LocalStore, id: &str) -> Result<Record> {
    if let Some(todo) = store.get(TASKS, id)? {
        return Ok(todo);
    }
    let mut matches: Vec<Record> = store
        .list(TASKS)?
        .into_iter()
        .filter(|todo| todo.id.starts_with(id))
        .collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!("no todo with id `{id}` (see `mana-todo list`)"),
        n => bail!("`{id}` matches {n} todos; give more of the id"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn connect(store: &LocalStore, server: &ServerArgs) -> Result<(SyncClient, bool)> {
    let was_guest = store.account()?.is_none();
    let client = SyncClient::new(store.clone(), &server.server, &server.token)?;
    if was_guest {
        eprintln!(
            "Signed in as {}; the todos on this device now belong to that account.",
            client.account().user
        );
    }
    Ok((client, was_guest))
}

fn sync(store: &LocalStore, server: &ServerArgs) -> Result<()> {
    let (client, _) = connect(store, server)?;
    let result = runtime()?.block_on(client.sync());
    let pending = store.pending_count()?;
    match result {
        Ok(report) => {
            if let SyncStatus::Error { reason } = store.status() {
                bail!("synced, but {reason}");
            }
            eprintln!(
                "Synced with {}: pushed {}, received {}.",
                client.account().server,
                report.pushed,
                report.received
            );
            Ok(())
        }
        Err(error) => Err(kept(error, pending)),
    }
}

/// A sync error, with the reassurance that nothing local was lost.
fn kept(error: ClientError, pending: u64) -> anyhow::Error {
    let advice = if error.is_transient() {
        "run `mana-todo sync` again when the server is reachable"
    } else {
        "fix the problem above and run `mana-todo sync` again"
    };
    anyhow!(
        "{error}\nEvery local change is kept on this device ({pending} waiting to be pushed); {advice}."
    )
}

fn status(store: &LocalStore) -> Result<()> {
    let pending = store.pending_count()?;
    if store.account()?.is_none() {
        println!("local-only");
        return Ok(());
    }
    let last_error = store.last_error()?;
    if pending == 0 && last_error.is_none() && store.last_synced_at()?.is_some() {
        println!("synced");
    } else {
        println!("pending {pending}");
    }
    if let Some(error) = last_error {
        println!("last error: {error}");
    }
    Ok(())
}

fn watch(store: &LocalStore, server: &ServerArgs, json: bool) -> Result<()> {
    let (client, _) = connect(store, server)?;
    runtime()?.block_on(async move {
        let mut todos = store.subscribe(todos_query());
        let mut statuses = store.watch_status();
        let live = client.clone();
        let mut live = tokio::spawn(async move {
            live.run_live(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        });
        loop {
            tokio::select! {
                next = todos.next() => match next {
                    Some(Ok(list)) => {
                        if json {
                            println!("{}", to_json(&list));
                        } else {
                            println!("--- {} todo(s) ---", list.len());
                            print!("{}", by_list(store, &list)?);
                        }
                    }
                    Some(Err(error)) => return Err(error.into()),
                    None => return Ok(()),
                },
                changed = statuses.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let status = statuses.borrow_and_update().clone();
                    if matches!(status, SyncStatus::Offline { .. } | SyncStatus::Error { .. }) {
                        eprintln!("{status}");
                    }
                }
                done = &mut live => {
                    return match done {
                        Ok(result) => result.map_err(|error| kept(error, store.pending_count().unwrap_or(0))),
                        Err(error) => Err(anyhow!("the sync task failed: {error}")),
                    };
                }
            }
        }
    })
}
