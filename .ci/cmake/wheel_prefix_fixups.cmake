# Injected with -DCMAKE_PROJECT_INCLUDE=... when building an interface package against the
# ROS 2 pip wheels (see .ci/setup_env.sh).
#
# The wheels' exported `<pkg>::<pkg>__rosidl_generator_py` targets carry the include paths of
# the machine that built them (/opt/python/cp311-cp311/include/python3.11 and that machine's
# numpy include dir). Those paths do not exist here, and CMake refuses to generate build files
# for targets that link to them. At the end of the top-level CMakeLists (deferred call) this
# replaces every such non-existent path by this interpreter's Python and NumPy include
# directories, which is what the generated extension modules actually need.

function(_centernet_ros_fix_wheel_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  set(_fixed 0)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "^/opt/python/" AND NOT EXISTS "${_dir}")
        set(_changed TRUE)
        if(_dir MATCHES "numpy")
          list(APPEND _new_dirs ${Python3_NumPy_INCLUDE_DIRS})
        else()
          list(APPEND _new_dirs ${Python3_INCLUDE_DIRS})
        endif()
      else()
        list(APPEND _new_dirs "${_dir}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new_dirs)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
      math(EXPR _fixed "${_fixed} + 1")
    endif()
  endforeach()
  message(STATUS "wheel_prefix_fixups: rewrote build-machine include paths of ${_fixed} imported targets")
endfunction()

if(CMAKE_SOURCE_DIR STREQUAL PROJECT_SOURCE_DIR)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _centernet_ros_fix_wheel_include_dirs)
endif()
