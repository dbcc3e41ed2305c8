"""Drives a running `riskgate serve` through Authsignal's official Python SDK (`authsignal` on PyPI).

    RISKGATE_URL=http://127.0.0.1:PORT/v1 RISKGATE_SECRET=... PYTHONPATH=... python3 tests/sdk/python_sdk.py

The server must run tests/sdk/rules. Exits non-zero on the first mismatch.
"""

import os
import sys
import time

from authsignal.client import ApiException, AuthsignalClient

API_URL = os.environ.get("RISKGATE_URL")
SECRET = os.environ.get("RISKGATE_SECRET")
if not API_URL or not SECRET:
    print("set RISKGATE_URL and RISKGATE_SECRET", file=sys.stderr)
    sys.exit(2)

client = AuthsignalClient(api_secret_key=SECRET, api_url=API_URL)
RUN = f"py-{os.getpid()}-{int(time.time() * 1000)}"
checks = 0


class Mismatch(Exception):
    pass


def expect(cond, what, got):
    global checks
    if not cond:
        raise Mismatch(f"mismatch: {what}; got {got!r}")
    checks += 1


def refused(call, status, code, what):
    try:
        got = call()
    except ApiException as e:
        expect(e.status_code == status, f"{what}: status {status}", e.status_code)
        expect(e.error_code == code, f"{what}: error_code {code}", e.error_code)
        expect(bool(e.error_description), f"{what}: a description", e.error_description)
        return
    raise Mismatch(f"mismatch: {what} should be refused; got {got!r}")


def main():
    user_id = f"user-{RUN}"

    # track: each of the four outcomes, with attributes in snake_case as the SDK's own tests send them.
    for outcome, state in [(None, "ALLOW"), ("challenge", "CHALLENGE_REQUIRED"),
                           ("review", "REVIEW_REQUIRED"), ("block", "BLOCK")]:
        attributes = {"ip_address": "203.0.113.7", "user_agent": "python-sdk-test", "device_id": "d1"}
        if outcome:
            attributes["custom"] = {"outcome": outcome}
        r = client.track(user_id=user_id, action="signIn", attributes=attributes)
        expect(r["state"] == state, f"track -> {state}", r)
        expect(bool(r.get("idempotency_key")), "track returns an idempotency key", r)
        expect((state == "CHALLENGE_REQUIRED") == bool(r.get("token")), "a token exactly for CHALLENGE_REQUIRED", r)
    r = client.track(user_id=user_id, action="signIn")
    expect(r["state"] == "ALLOW", "track without attributes", r)

    # The same idempotency key again (camelCase this time): the same action and token.
    key = f"key-{RUN}"
    attributes = {"idempotencyKey": key, "custom": {"outcome": "challenge", "amount": 250}}
    first = client.track(user_id=user_id, action="withdraw-funds", attributes=attributes)
    expect(first["state"] == "CHALLENGE_REQUIRED" and first.get("token"), "challenge tracked", first)
    again = client.track(user_id=user_id, action="withdraw-funds", attributes=attributes)
    expect(again["token"] == first["token"] and again["idempotency_key"] == key, "repeat returns the same token", again)

    # The same key with different attributes is refused.
    refused(lambda: client.track(user_id=user_id, action="withdraw-funds",
                                 attributes={"idempotencyKey": key, "custom": {"outcome": "challenge", "amount": 9999}}),
            409, "idempotency_conflict", "reused key with other attributes")

    # get_action.
    got = client.get_action(user_id=user_id, action="withdraw-funds", idempotency_key=key)
    expect(got["state"] == "CHALLENGE_REQUIRED", "get_action state", got)
    expect(got.get("created_at") and got.get("state_updated_at"), "get_action times", got)
    refused(lambda: client.get_action(user_id=user_id, action="withdraw-funds", idempotency_key="no-such-key"),
            404, "action_not_found", "get_action of an unknown key")

    # validate_challenge: not while pending.
    pending = client.validate_challenge(attributes={"token": first["token"]})
    expect(pending["is_valid"] is False and pending["state"] == "CHALLENGE_REQUIRED", "validate while pending", pending)

    # update_action to CHALLENGE_SUCCEEDED.
    updated = client.update_action(user_id=user_id, action="withdraw-funds", idempotency_key=key,
                                   attributes={"state": "CHALLENGE_SUCCEEDED"})
    expect(updated["state"] == "CHALLENGE_SUCCEEDED", "update_action state", updated)

    # validate_challenge: valid exactly once.
    valid = client.validate_challenge(attributes={"token": first["token"], "user_id": user_id})
    expect(valid["is_valid"] is True, "validate after success is valid", valid)
    expect(valid["user_id"] == user_id and valid["action"] == "withdraw-funds" and valid["idempotency_key"] == key,
           "validate names the action", valid)
    twice = client.validate_challenge(attributes={"token": first["token"]})
    expect(twice["is_valid"] is False, "a token is valid once", twice)

    # A bad action code, a bad field.
    refused(lambda: client.track(user_id=user_id, action="sign in", attributes={}), 400, "invalid_request",
            "a bad action code")
    refused(lambda: client.track(user_id=user_id, action="signIn", attributes={"ip_address": "nope"}), 400,
            "invalid_request", "a bad field")

    # A wrong secret.
    wrong = AuthsignalClient(api_secret_key=SECRET + "-wrong", api_url=API_URL)
    refused(lambda: wrong.get_action(user_id=user_id, action="withdraw-funds", idempotency_key=key), 401,
            "unauthorized", "a wrong secret")
    refused(lambda: wrong.update_action(user_id=user_id, action="withdraw-funds", idempotency_key=key,
                                        attributes={"state": "CHALLENGE_FAILED"}), 401, "unauthorized",
            "a wrong secret on update_action")
    still = client.get_action(user_id=user_id, action="withdraw-funds", idempotency_key=key)
    expect(still["state"] == "CHALLENGE_SUCCEEDED", "a refused call changed nothing", still)

    print(f"python sdk: {checks} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any mismatch or SDK failure fails the run
        print(f"python sdk: {e}", file=sys.stderr)
        print(f"python sdk: {checks} passed, 1 failed")
        sys.exit(1)
