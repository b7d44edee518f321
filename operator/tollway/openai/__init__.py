"""The OpenAI side of a model: its wire format (`protocol`, pure) and the server beside Triton (`server`)."""
