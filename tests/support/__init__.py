"""What tests share: launchers, model builders, fakes and small types (conftest files hold
fixtures only)."""
