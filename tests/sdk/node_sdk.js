// Drives a running `riskgate serve` through Authsignal's official Node SDK (@authsignal/node).
//
//   RISKGATE_URL=http://127.0.0.1:PORT/v1 RISKGATE_SECRET=... NODE_PATH=.../node_modules node tests/sdk/node_sdk.js
//
// The server must run tests/sdk/rules. Exits non-zero on the first mismatch.
"use strict";

const { Authsignal, AuthsignalError } = require("@authsignal/node");

const apiUrl = process.env.RISKGATE_URL;
const apiSecretKey = process.env.RISKGATE_SECRET;
if (!apiUrl || !apiSecretKey) {
  console.error("set RISKGATE_URL and RISKGATE_SECRET");
  process.exit(2);
}

const client = new Authsignal({ apiSecretKey, apiUrl, retries: 0 });
const run = `node-${process.pid}-${Date.now()}`;
let checks = 0;

function expect(cond, what, got) {
  if (!cond) {
    throw new Error(`mismatch: ${what}; got ${JSON.stringify(got)}`);
  }
  checks += 1;
}

async function refused(promise, status, code, what) {
  try {
    const r = await promise;
    throw new Error(`mismatch: ${what} should be refused; got ${JSON.stringify(r)}`);
  } catch (e) {
    if (!(e instanceof AuthsignalError)) throw e;
    expect(e.statusCode === status, `${what}: status ${status}`, e.statusCode);
    expect(e.errorCode === code, `${what}: errorCode ${code}`, e.errorCode);
    expect(typeof e.errorDescription === "string" && e.errorDescription.length > 0, `${what}: a description`, e.errorDescription);
  }
}

async function main() {
  const userId = `user-${run}`;

  // track: each of the four outcomes.
  const outcomes = [
    [undefined, "ALLOW"],
    ["challenge", "CHALLENGE_REQUIRED"],
    ["review", "REVIEW_REQUIRED"],
    ["block", "BLOCK"],
  ];
  for (const [outcome, state] of outcomes) {
    const attributes = { ipAddress: "203.0.113.7", userAgent: "node-sdk-test", deviceId: "d1" };
    if (outcome) attributes.custom = { outcome };
    const r = await client.track({ userId, action: "signIn", attributes });
    expect(r.state === state, `track → ${state}`, r);
    expect(typeof r.idempotencyKey === "string" && r.idempotencyKey.length > 0, "track returns an idempotencyKey", r);
    expect((state === "CHALLENGE_REQUIRED") === (typeof r.token === "string"), `a token exactly for CHALLENGE_REQUIRED`, r);
  }

  // The same idempotency key again: the same action and token.
  const idempotencyKey = `key-${run}`;
  const attributes = { idempotencyKey, custom: { outcome: "challenge", amount: 250 } };
  const first = await client.track({ userId, action: "withdraw-funds", attributes });
  expect(first.state === "CHALLENGE_REQUIRED" && first.token, "challenge tracked", first);
  const again = await client.track({ userId, action: "withdraw-funds", attributes });
  expect(again.token === first.token && again.idempotencyKey === idempotencyKey, "repeat returns the same token", again);

  // The same key with different attributes is refused.
  await refused(
    client.track({ userId, action: "withdraw-funds", attributes: { idempotencyKey, custom: { outcome: "challenge", amount: 9999 } } }),
    409, "idempotency_conflict", "reused key with other attributes");

  // getAction.
  const got = await client.getAction({ userId, action: "withdraw-funds", idempotencyKey });
  expect(got.state === "CHALLENGE_REQUIRED", "getAction state", got);
  expect(typeof got.createdAt === "string" && typeof got.stateUpdatedAt === "string", "getAction times", got);
  expect(Array.isArray(got.rules) && got.rules[0].ruleId === "outcome", "getAction rules", got);
  await refused(client.getAction({ userId, action: "withdraw-funds", idempotencyKey: "no-such-key" }),
    404, "action_not_found", "getAction of an unknown key");

  // validateChallenge: not while pending.
  const pending = await client.validateChallenge({ token: first.token });
  expect(pending.isValid === false && pending.state === "CHALLENGE_REQUIRED", "validate while pending is not valid", pending);

  // updateAction to CHALLENGE_SUCCEEDED.
  const updated = await client.updateAction({ userId, action: "withdraw-funds", idempotencyKey, attributes: { state: "CHALLENGE_SUCCEEDED" } });
  expect(updated.state === "CHALLENGE_SUCCEEDED", "updateAction state", updated);
  await refused(client.updateAction({ userId, action: "withdraw-funds", idempotencyKey, attributes: { state: "ALLOW" } }),
    409, "invalid_transition", "updateAction to a state it cannot move to");

  // validateChallenge: valid exactly once.
  const valid = await client.validateChallenge({ token: first.token, userId, action: "withdraw-funds" });
  expect(valid.isValid === true, "validate after success is valid", valid);
  expect(valid.userId === userId && valid.action === "withdraw-funds" && valid.idempotencyKey === idempotencyKey, "validate names the action", valid);
  expect(valid.state === "CHALLENGE_SUCCEEDED", "validate state", valid);
  const twice = await client.validateChallenge({ token: first.token });
  expect(twice.isValid === false, "a token is valid once", twice);
  const unknown = await client.validateChallenge({ token: "not-a-token" });
  expect(unknown.isValid === false, "an unknown token is not valid", unknown);

  // A bad action code.
  await refused(client.track({ userId, action: "sign.in", attributes: {} }), 400, "invalid_request", "a bad action code");
  await refused(client.track({ userId, action: "signIn", attributes: { ipAddress: "not-an-ip" } }), 400, "invalid_request", "a bad field");

  // A wrong secret.
  const wrong = new Authsignal({ apiSecretKey: `${apiSecretKey}-wrong`, apiUrl, retries: 0 });
  await refused(wrong.track({ userId, action: "signIn", attributes: {} }), 401, "unauthorized", "a wrong secret");
  await refused(wrong.getAction({ userId, action: "withdraw-funds", idempotencyKey }), 401, "unauthorized", "a wrong secret on getAction");
  const still = await client.getAction({ userId, action: "withdraw-funds", idempotencyKey });
  expect(still.state === "CHALLENGE_SUCCEEDED", "a refused call changed nothing", still);

  console.log(`node sdk: ${checks} passed, 0 failed`);
}

main().catch((e) => {
  console.error(`node sdk: ${e.stack || e}`);
  console.log(`node sdk: ${checks} passed, 1 failed`);
  process.exit(1);
});
