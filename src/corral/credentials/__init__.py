"""corral.credentials: the secrets a run is given, kept out of everything else.

store = CredentialStore()                          # <corral home>/credentials
store.add("github_token", "default", {"token": "ghp_..."})
loaded = store.resolve(agent.config.credentials)   # CredentialError names every problem
env = {k: v for c in loaded for k, v in c.env_for(PurePosixPath("/credentials")).items()}
block = credential_context(loaded, "/credentials")
redactor = Redactor(s for c in loaded for s in c.secrets())
"""

from corral.credentials.errors import CredentialError, CredentialProblem, CredentialUsageError
from corral.credentials.models import (
    KEYLESS_AUTH,
    MODEL_KEY_VARIABLES,
    implied_credentials,
    model_key_type,
    model_key_variable,
)
from corral.credentials.prompt import credential_context
from corral.credentials.redact import MIN_SECRET_LEN, RedactingSink, Redactor
from corral.credentials.store import (
    CredentialStore,
    LoadedCredential,
    StoredCredential,
    default_root,
)
from corral.credentials.types import (
    DEFAULT_INSTANCE,
    WEBHOOK_SECRET,
    CredentialField,
    CredentialRef,
    CredentialType,
    EnvVar,
    credential_type,
    credential_types,
    parse_ref,
    webhook_secret_ref,
)

__all__ = [
    "DEFAULT_INSTANCE",
    "KEYLESS_AUTH",
    "MIN_SECRET_LEN",
    "MODEL_KEY_VARIABLES",
    "WEBHOOK_SECRET",
    "CredentialError",
    "CredentialField",
    "CredentialProblem",
    "CredentialRef",
    "CredentialStore",
    "CredentialType",
    "CredentialUsageError",
    "EnvVar",
    "LoadedCredential",
    "RedactingSink",
    "Redactor",
    "StoredCredential",
    "credential_context",
    "credential_type",
    "credential_types",
    "default_root",
    "implied_credentials",
    "model_key_type",
    "model_key_variable",
    "parse_ref",
    "webhook_secret_ref",
]
