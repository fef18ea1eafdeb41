# Install layout and the Debian package (included from the top-level CMakeLists.txt, after the targets).
#
#   cmake --install BUILD [--component bench]     # FHS layout under CMAKE_INSTALL_PREFIX (default /usr, see below)
#   cpack --config BUILD/CPackConfig.cmake -G DEB  # otlp-gateway_VERSION_ARCH.deb, dependencies from dpkg-shlibdeps
#
# What is installed (component "gateway", the only one in the package):
#   bin/otlp-gateway; /etc/otlp-gateway/gateway.yaml (config/examples/gateway.yaml, a conffile in the .deb: an edited
#   copy is never overwritten); the systemd unit (deploy/systemd/otlp-gateway.service, installed disabled: nothing
#   enables or starts it); README.md and docs/*.md in the doc directory; the Grafana dashboard in share/otlp-gateway.
# Component "bench" (otlp-load, otlp-sink: load generator and recording sink, handy to try a deployment) is installed
# only when asked for (`cmake --install BUILD --component bench`) and is not in the package.

# The unit runs /usr/bin/otlp-gateway with /etc/otlp-gateway/gateway.yaml, where a system service and a package
# belong: /usr is the default prefix of a new build directory (one configured before keeps its cached prefix). With
# -DCMAKE_INSTALL_PREFIX=... the unit names the binary and config under that prefix (config in GNUInstallDirs'
# sysconfdir: PREFIX/etc, /etc/opt/X for /opt/X), the package too.
if(CMAKE_INSTALL_PREFIX_INITIALIZED_TO_DEFAULT)
  set(CMAKE_INSTALL_PREFIX "/usr" CACHE PATH "Install path prefix" FORCE)
endif()
# /usr/share/doc/otlp-gateway (the package's name), not GNUInstallDirs' default share/doc/${PROJECT_NAME}.
set(CMAKE_INSTALL_DOCDIR "share/doc/otlp-gateway" CACHE PATH "Documentation (README.md, docs/*.md)")
include(GNUInstallDirs)

# systemd's own answer (Debian 12: /lib/systemd/system), else the usual place.
pkg_get_variable(OTLPGW_PC_SYSTEMD_UNITDIR systemd systemdsystemunitdir)
if(NOT OTLPGW_PC_SYSTEMD_UNITDIR)
  set(OTLPGW_PC_SYSTEMD_UNITDIR "/lib/systemd/system")
endif()
set(OTLPGW_SYSTEMD_UNITDIR "${OTLPGW_PC_SYSTEMD_UNITDIR}" CACHE PATH "Where the systemd unit is installed")

set(OTLPGW_CONFDIR "${CMAKE_INSTALL_FULL_SYSCONFDIR}/otlp-gateway")

install(TARGETS otlp-gateway RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT gateway)
install(FILES ${CMAKE_SOURCE_DIR}/config/examples/gateway.yaml DESTINATION ${OTLPGW_CONFDIR} COMPONENT gateway)
file(GLOB OTLPGW_DOCS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/docs/*.md)
install(FILES ${CMAKE_SOURCE_DIR}/README.md ${OTLPGW_DOCS} DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT gateway)
install(FILES ${CMAKE_SOURCE_DIR}/deploy/grafana/otlp-gateway.json
  DESTINATION ${CMAKE_INSTALL_DATADIR}/otlp-gateway/grafana COMPONENT gateway)

# The unit as shipped in deploy/systemd/ names the /usr paths; another prefix gets its own paths written in.
set(OTLPGW_UNIT_SRC ${CMAKE_SOURCE_DIR}/deploy/systemd/otlp-gateway.service)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${OTLPGW_UNIT_SRC})
file(READ ${OTLPGW_UNIT_SRC} OTLPGW_UNIT)
string(REPLACE "/usr/bin/otlp-gateway" "${CMAKE_INSTALL_FULL_BINDIR}/otlp-gateway" OTLPGW_UNIT "${OTLPGW_UNIT}")
string(REPLACE "/etc/otlp-gateway/" "${OTLPGW_CONFDIR}/" OTLPGW_UNIT "${OTLPGW_UNIT}")
string(REPLACE "/usr/share/doc/otlp-gateway/" "${CMAKE_INSTALL_FULL_DOCDIR}/" OTLPGW_UNIT "${OTLPGW_UNIT}")
file(WRITE ${CMAKE_BINARY_DIR}/systemd/otlp-gateway.service.tmp "${OTLPGW_UNIT}")
configure_file(${CMAKE_BINARY_DIR}/systemd/otlp-gateway.service.tmp ${CMAKE_BINARY_DIR}/systemd/otlp-gateway.service
  COPYONLY)  # rewritten only when it changed
install(FILES ${CMAKE_BINARY_DIR}/systemd/otlp-gateway.service DESTINATION ${OTLPGW_SYSTEMD_UNITDIR} COMPONENT gateway)

install(TARGETS otlp-load otlp-sink RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT bench EXCLUDE_FROM_ALL)

# --- the .deb ------------------------------------------------------------------------------------------------------
set(OTLPGW_PACKAGE_CONTACT "otlp-gateway maintainers <maintainers@users.noreply.r-seed-f98cd4b2.example>"
  CACHE STRING "Maintainer field of the package")
set(CPACK_PACKAGE_NAME "otlp-gateway")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")  # project(... VERSION), the same as `otlp-gateway --version`
set(CPACK_PACKAGE_CONTACT "${OTLPGW_PACKAGE_CONTACT}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "OTLP load balancer that keeps every span of a trace on the same collector")
# The extended description, in lines of at most 80 columns as Debian wants (CPack indents each line by one space).
set(CPACK_PACKAGE_DESCRIPTION "otlp-gateway receives OTLP/gRPC (port 4317) and OTLP/HTTP (4318) and spreads
it over OpenTelemetry Collectors by consistent hashing of the trace ID (or the
service), so that tail sampling sees whole traces. Backends static or from DNS,
health checks, retry queues with an optional on-disk spool, TLS, Prometheus
metrics on port 8888. The systemd unit is installed disabled.")
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_COMPONENTS_ALL gateway)  # one package; the bench tools stay out
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME "DEB-DEFAULT")  # otlp-gateway_0.1.0_amd64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)  # Depends from dpkg-shlibdeps (dpkg-dev): the runtime libraries only
find_program(OTLPGW_DPKG dpkg)
if(OTLPGW_DPKG)
  execute_process(COMMAND ${OTLPGW_DPKG} --print-architecture OUTPUT_VARIABLE CPACK_DEBIAN_PACKAGE_ARCHITECTURE
    OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
# The config is a conffile: dpkg never overwrites an edited copy, and keeps it on remove (purge deletes it). CPack does
# not mark /etc files itself (debhelper would): the conffiles member lists it. The maintainer scripts only tell a
# running systemd that the unit changed (daemon-reload) and stop the service on removal; they never enable or start it.
file(WRITE ${CMAKE_BINARY_DIR}/debian/conffiles.tmp "${OTLPGW_CONFDIR}/gateway.yaml\n")
configure_file(${CMAKE_BINARY_DIR}/debian/conffiles.tmp ${CMAKE_BINARY_DIR}/debian/conffiles COPYONLY)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_BINARY_DIR}/debian/conffiles ${CMAKE_SOURCE_DIR}/deploy/debian/postinst
  ${CMAKE_SOURCE_DIR}/deploy/debian/prerm ${CMAKE_SOURCE_DIR}/deploy/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
