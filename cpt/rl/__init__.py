"""The mathematics of RFT: rollouts, rewards, advantages, log-probabilities, the policy loss and the reference."""
