// Package packaging builds llmlab's .deb (build-deb.sh, `make deb`, from
// nfpm.yaml and the maintainer scripts in deb/). Its tests check that the
// package is reproducible, lintian-clean and complete, and that no link of
// the documentation dangles, in the repository or in the package
// (doclinks_test.go); the real-systemd tests in units/ install, upgrade,
// remove and purge it.
package packaging
