/*
 * Build-time check of the crypt() that scripts/build-ssh-server.sh links into dropbear
 * (musl's src/crypt, compiled from Debian's musl source package, because Debian's musl-dev
 * ships no crypt(): Debian bug #947193). deepdockd writes SHA-512 ("$6$") hashes only, so
 * this checks two SHA-512 vectors of the SHA-crypt specification (default rounds and
 * rounds=10000) and that a wrong password does not match. Exit status 0 when all pass.
 */
#include <crypt.h>
#include <stdio.h>
#include <string.h>

static int check(const char *key, const char *setting, const char *want) {
	const char *got = crypt(key, setting);
	if (got == NULL || strcmp(got, want) != 0) {
		fprintf(stderr, "crypt-check: crypt(\"%s\", \"%s\") = \"%s\", want \"%s\"\n", key,
			setting, got ? got : "(null)", want);
		return 1;
	}
	return 0;
}

int main(void) {
	static const char h1[] = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBn"
				 "IFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
	static const char h2[] = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3"
				 "Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.";
	int bad = 0;
	const char *wrong;

	bad |= check("Hello world!", "$6$saltstring", h1);
	bad |= check("Hello world!", "$6$rounds=10000$saltstringsaltstring", h2);
	/* verification as Dropbear does it: crypt(password, stored hash) == stored hash */
	bad |= check("Hello world!", h1, h1);
	wrong = crypt("Hello world?", h1);
	if (wrong != NULL && strcmp(wrong, h1) == 0) {
		fprintf(stderr, "crypt-check: a wrong password matched\n");
		bad = 1;
	}
	if (!bad) {
		printf("crypt-check: SHA-512 crypt ok\n");
	}
	return bad;
}
