//! Todo lists: "My todos" (the user's personal space) and shared lists
//! (shared spaces): showing them, creating one, sharing it, its members,
//! leaving it, and which list a name or id on the command line means.

use anyhow::{Context, Result, anyhow, bail};
use mana_sync_client::{LocalSpace, LocalStore, Record, Role, SyncClient};
use serde_json::{Value, json};

/// The name of the personal list.
pub const MY_TODOS: &str = "My todos";

/// A list a command names: the personal one, or a shared one.
pub enum Target {
    /// "My todos".
    Mine,
    /// A shared list.
    Shared(LocalSpace),
}

impl Target {
    /// The space id records of this list carry.
    pub fn space_id(&self) -> Option<&str> {
        match self {
            Target::Mine => None,
            Target::Shared(space) => Some(&space.id),
        }
    }
}

/// The list `name` names among the lists the device knows: "My todos", a
/// shared list's exact id or name, or a unique prefix of its id.
pub fn resolve(store: &LocalStore, name: &str) -> Result<Target> {
    if name.eq_ignore_ascii_case(MY_TODOS) {
        return Ok(Target::Mine);
    }
    let spaces = store.spaces()?;
    if let Some(space) = spaces.iter().find(|s| s.id == name) {
        return Ok(Target::Shared(space.clone()));
    }
    let mut named: Vec<&LocalSpace> = spaces.iter().filter(|s| s.name == name).collect();
    if named.is_empty() {
        named = spaces.iter().filter(|s| s.id.starts_with(name)).collect();
    }
    match named.as_slice() {
        [one] => Ok(Target::Shared((*one).clone())),
        [] => bail!(
            "no list `{name}` (see `mana-todo lists`; lists shared with you appear after a sync)"
        ),
        many => bail!(
            "`{name}` names {} lists; use the id (see `mana-todo lists`)",
            many.len()
        ),
    }
}

/// The shared list `name` names, after refreshing the lists from the server.
async fn shared(client: &SyncClient, name: &str) -> Result<LocalSpace> {
    client
        .refresh_spaces()
        .await
        .context("cannot read your lists from the server")?;
    match resolve(client.store(), name)? {
        Target::Shared(space) => Ok(space),
        Target::Mine => {
            bail!("`{MY_TODOS}` is yours alone; create a list to share (`mana-todo new-list NAME`)")
        }
    }
}

/// How the user stands in a shared list, for people.
fn standing(space: &LocalSpace) -> String {
    match space.role.as_str() {
        "viewer" => "viewer, read-only".into(),
        role => role.into(),
    }
}

/// `mana-todo lists`: every list with its role and number of todos.
pub fn show(store: &LocalStore, todos: &[Record], json: bool) -> Result<String> {
    let count = |space: Option<&str>| {
        todos
            .iter()
            .filter(|t| t.space_id.as_deref() == space)
            .count()
    };
    let spaces = store.spaces()?;
    if json {
        let mut lists =
            vec![json!({ "id": null, "name": MY_TODOS, "role": "owner", "todos": count(None) })];
        lists.extend(spaces.iter().map(
            |s| json!({ "id": s.id, "name": s.name, "role": s.role, "todos": count(Some(&s.id)) }),
        ));
        return Ok(format!("{}\n", Value::Array(lists)));
    }
    let width = spaces
        .iter()
        .map(|s| s.name.chars().count())
        .chain([MY_TODOS.len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{MY_TODOS:<width$}  {:<17}  {} todo(s)\n",
        "personal",
        count(None)
    );
    for space in &spaces {
        out.push_str(&format!(
            "{:<width$}  {:<17}  {} todo(s)  {}\n",
            space.name,
            standing(space),
            count(Some(&space.id)),
            space.id
        ));
    }
    Ok(out)
}

/// `mana-todo new-list NAME`: prints the new list's id.
pub async fn create(client: &SyncClient, name: &str) -> Result<String> {
    let space = client.create_space(name).await?;
    Ok(format!("{}\n", space.id))
}

/// `mana-todo share LIST --with USER --role ROLE`.
pub async fn share(client: &SyncClient, list: &str, user: &str, role: Role) -> Result<String> {
    let space = shared(client, list).await?;
    let member = client
        .set_member(&space.id, user, role)
        .await
        .with_context(|| format!("cannot share `{}` with {user}", space.name))?;
    Ok(format!(
        "Shared `{}` with {} ({}).\n",
        space.name, member.user_id, member.role
    ))
}

/// `mana-todo unshare LIST --with USER`.
pub async fn unshare(client: &SyncClient, list: &str, user: &str) -> Result<String> {
    let space = shared(client, list).await?;
    client
        .remove_member(&space.id, user)
        .await
        .with_context(|| format!("cannot remove {user} from `{}`", space.name))?;
    Ok(format!("Removed {user} from `{}`.\n", space.name))
}

/// `mana-todo leave LIST`: its todos leave this device too.
pub async fn leave(client: &SyncClient, list: &str) -> Result<String> {
    let space = shared(client, list).await?;
    client
        .leave(&space.id)
        .await
        .with_context(|| format!("cannot leave `{}`", space.name))?;
    Ok(format!(
        "Left `{}`; its todos are no longer on this device.\n",
        space.name
    ))
}

/// `mana-todo members LIST`: each member and role, the user marked.
pub async fn members(client: &SyncClient, list: &str, json: bool) -> Result<String> {
    let space = shared(client, list).await?;
    let view = client.space(&space.id).await?;
    let members = view
        .members
        .ok_or_else(|| anyhow!("the server did not list the members of `{}`", view.name))?;
    if json {
        let members: Vec<Value> = members
            .iter()
            .map(|m| json!({ "userId": m.user_id, "role": m.role }))
            .collect();
        return Ok(format!("{}\n", Value::Array(members)));
    }
    let me = &client.account().user;
    let width = members
        .iter()
        .map(|m| m.user_id.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = format!("Members of `{}`:\n", view.name);
    for member in &members {
        let you = if &member.user_id == me { "  (you)" } else { "" };
        out.push_str(&format!(
            "{:<width$}  {}{you}\n",
            member.user_id, member.role
        ));
    }
    Ok(out)
}

/// The heading of a list's todos in `mana-todo list`.
pub fn heading(store: &LocalStore, space: Option<&str>) -> Result<String> {
    Ok(match space {
        None => MY_TODOS.to_owned(),
        Some(id) => match store.space(id)? {
            Some(space) => format!("{} ({})", space.name, standing(&space)),
            None => format!("{id} (shared)"),
        },
    })
}
