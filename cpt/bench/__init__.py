"""Benchmarks behind `python -m cpt bench`: each answers a user's question with figures measured on this machine.

  cli             the `bench` command line: one subcommand per benchmark
  rounds          alternating rounds of the sides of a comparison, and the median ratio with its range
  report          what every printout states: machine, versions, and the per-round table
  clock           step timing of our side (a run of cpt.commands.fit) and of a transformers Trainer
  trl_processor   the family's processor and chat template TRL's trainers use on our checkpoint
  rft             our RFT step (shared prefix and repeated prompt) against TRL's GRPOTrainer, per case
  sft             our SFT step against TRL's SFTTrainer
  memory          peak memory of one RFT update at a 152k vocabulary: the full log-prob path against the chunked
"""
