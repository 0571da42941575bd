"""The delivery path: outbox → intake → matcher → lanes → sender → recorder, and retries."""
