/**
 * A token for `user` from a server in dev mode (`POST /dev/token`, answered
 * to this machine only); the server's message when it refuses.
 */
export async function devToken(server: string, user: string): Promise<string> {
  const response = await fetch(`${server}/dev/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body?.error?.message ?? `the server answered ${response.status}`);
  return body.token;
}
