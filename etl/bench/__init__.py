"""`nodetap bench`: one command, one run, every number on the same data.

Modules, in the order a run uses them: `data` (the cached simulated node dir), `measure`
(one throughput measurement, run in its own process), `replaced` (the per-line approach
nodetap replaces), `memory` (peak RSS under a backlog past the limit), `latency` and
`writer` (line written to trade received on `/ws`), `report` (Markdown and JSON), `run`
(the command).
"""
