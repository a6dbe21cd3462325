"""Protocol buffer sources and generated modules. Regenerate with `make proto`; logic never lives here."""
