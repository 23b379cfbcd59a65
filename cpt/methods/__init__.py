"""The training paradigms as LightningModules over one shared base: SFT and RFT."""
