// Prints a NextAuth v4 session token made by the real next-auth encoder (`encode` from
// `next-auth/jwt`), exactly what the app puts in its `next-auth.session-token` cookie.
//
// usage: node mint.mjs --secret S --sub USER_ID [--max-age SECONDS] [--pad N] [--name NAME]
//   --max-age  token lifetime in seconds (negative: an already expired token)
//   --pad      adds a claim of N characters (to make a token large enough to be chunked)
import { encode } from "next-auth/jwt";

const args = process.argv.slice(2);
const opts = {};
for (let i = 0; i < args.length; i += 2) {
  const key = args[i];
  const value = args[i + 1];
  if (!key.startsWith("--") || value === undefined) {
    console.error(`mint.mjs: bad argument ${key}`);
    process.exit(2);
  }
  opts[key.slice(2)] = value;
}
if (!opts.secret || !opts.sub) {
  console.error("usage: node mint.mjs --secret S --sub USER_ID [--max-age SECONDS] [--pad N]");
  process.exit(2);
}
const token = { sub: opts.sub, name: opts.name ?? "test user", email: "test@example.com" };
if (opts.pad) token.pad = "x".repeat(Number(opts.pad));
const maxAge = opts["max-age"] === undefined ? 3600 : Number(opts["max-age"]);
process.stdout.write(await encode({ token, secret: opts.secret, maxAge }));
