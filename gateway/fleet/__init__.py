"""Fleet operations for ops: the fleet view (``view``, `sensegate fleet status`, the web page in
``web``), staged rollouts of configs, commands and agent updates (``rollout``), and their command
line (``cli``). Gateway-side pieces live in gateway.remote (health, agent, updates)."""
