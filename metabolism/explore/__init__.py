"""The exploration loop of the seed: a UCB tree over Phase 2 configs, four slots in parallel.

Modules, one idea each:
  tree      nodes, status classification, reward, UCB, atomic JSON persistence
  mutation  what a config mutation may touch, applying it, the machine-parsed Mutation line
  proposer  the built-in proposer (the seed's strategy-selection table)
  agent     the external agent hook (a command that answers with a mutation)
  logs      <study>_analysis.md, <study>_memory.md and ucb_scores.txt, regenerated from the tree
  backends  where slot runs execute: a local process pool or a Ray cluster
  exploration_tracking  the exploration study as an MLflow parent run, iterations as tagged
            child runs
  runners   the plug-in that performs one slot run (real Phase 2 or deterministic fakes)
  plots     the tree plot
  loop      the exploration loop (ExplorationLoop): plan a round, run it, record it, resume
            after a kill
"""
