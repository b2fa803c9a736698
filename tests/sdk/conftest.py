"""tests/sdk/fixtures/ holds broken driver projects for the checker: never collect their tests."""

collect_ignore_glob = ["fixtures/*"]
