"""Example programs that use Ensign (each is run by the tests)."""
