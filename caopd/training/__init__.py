"""Training math for the distill stage: divergences, the chunked loss, the EMA teacher."""
